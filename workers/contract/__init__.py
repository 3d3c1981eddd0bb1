"""The contract between the service and the workers: torch-free, Ray-free, FastAPI-free.

Everything both sides must agree on lives here and only here; ``service/`` and ``migrations/``
import nothing else from ``workers`` (``tests/test_boundaries.py`` enforces it).

- ``catalog``: the names a spec may use and the defaults they bring; ``registry``, ``norms``.
- ``spec``: ``TrainSpec`` / ``EvalSpec`` (the science a job runs) and ``Resources``.
- ``jobs``: a job as stored -- kind, the resolved work spec, resources, retries -- validated and
  resolved once, at submission; the driver and the Ray entry points receive it typed.
- ``sweep``: the sweep spec, its trial expansion and the Ray resource sizing of its trials.
- ``status``: job statuses; ``events``: the events a driver reports, typed.
- ``layout``: where a job's files live under the shared storage dir (one definition).
- ``outbox``: the on-disk spool and result a driver leaves for the service.
- ``results``: what a reader of a job's metrics must be warned about.
"""
