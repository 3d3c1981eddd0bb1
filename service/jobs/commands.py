"""The job actions -- submit, cancel, retry, logs -- in one place, for the REST API and the pages.

``service/api/routes/jobs.py`` and ``service/ui/routes.py`` (through ``service/ui/data.py``) both
call these functions, so a job submitted from a page is validated, resolved, confined, made
idempotent and logged exactly as one posted to ``POST /v1/jobs``. Every action reaches the job
through ``access.owned_job`` (another owner's job is ``store.JobNotFound``, as a missing one) and
raises the store's and the state machine's own errors; the callers turn them into HTTP answers
or pages. Waking the dispatcher is the caller's (it holds the app).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from service.auth.access import Principal, guard_resolver, owned_job
from service.core.config import Settings
from service.db.models import Job
from service.jobs import store, transitions
from service.jobs.checkpoints import checkpoint_resolver, recording
from service.jobs.paths import confine_submission
from service.jobs.specs import SpecError, SweepJob, build_stored_spec, build_sweep_spec, parse_job_request
from service.sweeps import trials

log = logging.getLogger("service.jobs")

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class BadIdempotencyKey(ValueError):
    """An Idempotency-Key outside 1-255 printable ASCII characters."""


class NoRayJob(LookupError):
    """The job has not been submitted to Ray yet: no driver log exists."""


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: a replay of an earlier request with the same idempotency key


def submit(session: Session, settings: Settings, caller: Principal, *, token_id: int, payload: Any,
           idempotency_key: str | None = None) -> Submitted:
    """Create a job from a decoded JSON spec: validated and resolved once (``jobs.specs``), owned
    by the caller's owner, starting only from checkpoints of jobs the caller may see, its typed
    paths confined to the data roots, idempotent under ``idempotency_key``. Raises ``SpecError``,
    ``BadIdempotencyKey`` and ``store.IdempotencyKeyInUse``."""
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise BadIdempotencyKey("Idempotency-Key must be 1-255 printable ASCII characters")
    req = parse_job_request(payload)
    # Another owner's job is refused with the message a missing job gets (guard_resolver).
    resolver, resolved = recording(guard_resolver(session, caller, checkpoint_resolver(session, settings)))
    children = None
    trial_rows: list[dict[str, Any]] | None = None
    if isinstance(req, SweepJob):
        spec, trial_rows = build_sweep_spec(req, resolve_checkpoint=resolver)

        def children(s: Session, job: Job) -> None:
            trials.create_trials(s, job.id, trial_rows or [])
    else:
        spec = build_stored_spec(req, resolve_checkpoint=resolver)
    # Paths the user typed must lie under the data roots; paths resolved from job ids are trusted.
    if refused := confine_submission(spec, trial_rows, settings.path_policy, frozenset(resolved)):
        raise SpecError(refused)
    job, created = store.create_job_idempotent(
        session, spec, kind=req.kind, idempotency_key=idempotency_key, token_id=token_id,
        owner_id=caller.owner_id, request_hash=store.request_fingerprint(payload), children=children,
    )
    if created:
        log.info("job submitted", extra={"job_id": job.id, "kind": job.kind, "method": job.method})
    return Submitted(job, created)


def cancel(session: Session, caller: Principal, job_id: int) -> Job:
    owned_job(session, caller, job_id)  # the owner never changes: checking before acting is safe
    job = transitions.request_cancel(session, job_id)
    log.info("cancel requested", extra={"job_id": job_id, "status": job.status})
    return job


def retry(session: Session, caller: Principal, job_id: int) -> Job:
    owned_job(session, caller, job_id)
    job = transitions.retry_job(session, job_id)
    log.info("retry requested", extra={"job_id": job_id, "attempt": job.attempt})
    return job


def logs(session: Session, caller: Principal, job_id: int, backend: Callable[[], Any]) -> str:
    """The job's Ray driver log. ``backend`` is asked for only after the ownership check (another
    owner's job is ``JobNotFound`` even without Ray); ``NoRayJob`` before the job has a Ray job;
    otherwise raises what the backend raises."""
    job = owned_job(session, caller, job_id)
    ray = backend()
    if not job.ray_job_id:
        raise NoRayJob(f"job {job_id} has no Ray job yet (status {job.status})")
    return ray.logs(job.ray_job_id) or ""
