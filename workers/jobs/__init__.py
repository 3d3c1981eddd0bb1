"""The Ray job side of a service job: the driver entry point and its reporter.

These modules talk HTTP to the service (httpx) and may import torch; they never import FastAPI or
SQLAlchemy -- the service is the only writer of the database.
"""
