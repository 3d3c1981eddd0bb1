"""Every read and write the web pages make, on behalf of the caller's API token.

The pages see exactly what the REST API shows the same token: these functions call the very store
functions the API routes call, under the same tenancy rule (``service.auth.access``). A non-admin
token sees and acts on its own owner's jobs only; another owner's job is ``store.JobNotFound``,
exactly as for a job that does not exist (the pages answer their 404). Every function here reaches
a job through ``visible_job`` (``access.owned_job``) or ``visible_jobs`` (``store.list_jobs`` with
the caller's ``Principal``); the job actions (submit, cancel, retry, logs) are the API's own
functions, ``service.jobs.commands``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.routes.artifacts import _list_artifacts, safe_artifact_path
from service.api.schemas import ArtifactOut, JobOut
from service.auth.access import Principal, owned_job
from service.core.config import Settings
from service.db.models import ApiToken, Job, JobEvent, Trial
from service.events import store as event_store
from service.jobs import commands, store
from service.sweeps import trials as trial_store

EVENT_PAGE = 1000
# A page shows at most this many events of one type (a long job's log stays readable).
MAX_EVENTS = 20_000


def principal(token: ApiToken) -> Principal:
    """Whose jobs ``token`` sees and acts on: the API's rule (``Principal.of``)."""
    return Principal.of(token)


def visible_job(session: Session, token: ApiToken, job_id: int) -> Job:
    """The job, if ``token`` may see it; ``store.JobNotFound`` otherwise -- for another owner's job
    exactly as for a missing one (as the API answers 404)."""
    return owned_job(session, principal(token), job_id)


def visible_jobs(
    session: Session,
    token: ApiToken,
    *,
    status: Iterable[str] | None = None,
    kind: str | None = None,
    method: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Job], str | None]:
    """A page of the jobs ``token`` may see, newest first, and the cursor of the next page."""
    statuses = list(status) if status is not None else None
    return store.list_jobs(session, status=statuses or None, kind=kind, method=method, cursor=cursor,
                           limit=limit, principal=principal(token))


def jobs_by_id(session: Session, token: ApiToken, ids: Iterable[int]) -> tuple[list[Job], list[int]]:
    """The visible jobs among ``ids`` (in the given order, without repeats) and the ids not found."""
    found: list[Job] = []
    missing: list[int] = []
    seen: set[int] = set()
    for job_id in ids:
        if job_id in seen:
            continue
        seen.add(job_id)
        try:
            found.append(visible_job(session, token, job_id))
        except store.JobNotFound:
            missing.append(job_id)
    return found, missing


def events(session: Session, token: ApiToken, job_id: int, *, type: str) -> list[JobEvent]:  # noqa: A002
    """A job's events of one type, oldest first (at most ``MAX_EVENTS``)."""
    visible_job(session, token, job_id)
    out: list[JobEvent] = []
    after: int | None = None
    while len(out) < MAX_EVENTS:
        page = event_store.list_events(session, job_id, type=type, after_id=after, limit=EVENT_PAGE)
        out += page
        if len(page) < EVENT_PAGE:
            break
        after = page[-1].id
    return out[:MAX_EVENTS]


def last_events(session: Session, token: ApiToken, job_id: int, *, type: str, limit: int) -> list[JobEvent]:  # noqa: A002
    """A job's newest ``limit`` events of one type, oldest first: read newest first down the
    ``(job_id, id)`` index, so a long job's page costs what it shows, not what it logged."""
    visible_job(session, token, job_id)
    stmt = (select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == type)
            .order_by(JobEvent.id.desc()).limit(limit))
    return list(reversed(session.scalars(stmt).all()))


def sweep_trials(session: Session, token: ApiToken, job_id: int) -> list[Trial]:
    """A sweep's trials in expansion order (the job must be a sweep: ``trials.NotASweep``)."""
    job = visible_job(session, token, job_id)
    trial_store.require_sweep(job)
    return trial_store.list_trials(session, job_id)


def sweep_trial(session: Session, token: ApiToken, job_id: int, trial_id: str) -> Trial:
    """One trial of a sweep (``trials.NotASweep`` / ``trials.TrialNotFound`` otherwise)."""
    job = visible_job(session, token, job_id)
    trial_store.require_sweep(job)
    return trial_store.get_trial(session, job_id, trial_id)


def artifacts(session: Session, token: ApiToken, settings: Settings, job_id: int) -> list[ArtifactOut]:
    visible_job(session, token, job_id)
    return _list_artifacts(settings.job_dir(job_id))


def artifact_path(session: Session, token: ApiToken, settings: Settings, job_id: int, name: str) -> Path:
    """One file of the job's directory (400 for names leaving it, 404 when absent)."""
    visible_job(session, token, job_id)
    return safe_artifact_path(settings.job_dir(job_id), name)


def ray_dashboard_url(job: Job, settings: Settings) -> str | None:
    """The job's page on the Ray dashboard (None before it has a Ray job)."""
    return JobOut.of(job, settings.ray_dashboard_url).ray_dashboard_url


def driver_log(session: Session, token: ApiToken, backend: Any, job_id: int) -> str | None:
    """The Ray job's driver log (``commands.logs``); None when the job has no Ray job yet."""
    try:
        return commands.logs(session, principal(token), job_id, lambda: backend)
    except commands.NoRayJob:
        return None


def cancel(session: Session, token: ApiToken, job_id: int) -> Job:
    return commands.cancel(session, principal(token), job_id)


def retry(session: Session, token: ApiToken, job_id: int) -> Job:
    return commands.retry(session, principal(token), job_id)


def submit(session: Session, token: ApiToken, settings: Settings, payload: Any,
           idempotency_key: str | None = None) -> commands.Submitted:
    """``commands.submit``, as ``POST /v1/jobs`` does it; the form's own idempotency key makes a
    second click (or a resent form) answer with the job the first one created. Raises
    ``SpecError``, ``commands.BadIdempotencyKey`` and ``store.IdempotencyKeyInUse``."""
    return commands.submit(session, settings, principal(token), token_id=token.id, payload=payload,
                           idempotency_key=idempotency_key)
