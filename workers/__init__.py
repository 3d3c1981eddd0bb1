"""The science of RAMP Orchestrator: data, models, attacks, training methods, evaluation.

Nothing in here imports FastAPI, SQLAlchemy or Ray; the Ray entry points live in
``workers.ray_entry`` and the job driver in ``workers.jobs`` and only they may.
"""
