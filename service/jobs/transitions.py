"""A job's status changes, each with all its effects in one commit.

Status changes go through a compare-and-set UPDATE (``WHERE status = <what we read>``) so concurrent
writers (an API cancel racing the dispatcher) cannot overwrite each other; the loser re-reads and
re-decides. The effects of a change happen in the same transaction: the ``<status>_at`` stamp, the
status event, the result (a success is never visible without its metrics), closing a sweep's open
trials when the sweep ends, the requeue reset. Listeners (metrics) hear of it after the commit.

JSON written here (a result) passes through ``service.db.jsonsafe`` first: NaN / Infinity become
null and are listed under ``nonfinite``, so one diverged metric cannot make a job unrecordable.

Driver reports go through ``driver_report``: a driver speaks for one attempt of a job, so a report
from an attempt that is no longer current raises ``StaleAttempt``, and a job that already ended
takes no report at all (``IllegalTransition``; both are answered 409). A requeue within an attempt
keeps the attempt's driver token (a submit that timed out but reached Ray is adopted with its
driver); a new attempt clears it, which also locks the previous attempt's driver out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.jsonsafe import sanitize_document
from service.db.models import Job, JobEvent
from service.jobs.store import get_job
from service.state import (
    ACTIVE,
    RETRYABLE,
    TERMINAL,
    IllegalTransition,
    JobStatus,
    check_transition,
    parse_status,
)
from service.sweeps import trials

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 20

# Called after every committed status change as (job, from_status, to_status); used for metrics.
TransitionListener = Callable[[Job, str, str], None]
transition_listeners: list[TransitionListener] = []


def claim_queued_jobs(session: Session, *, limit: int, claimer: str) -> list[Job]:
    """Atomically move up to ``limit`` queued jobs (oldest first) to dispatching for ``claimer``.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent claimers take disjoint rows without
    waiting. SQLite: a conditional UPDATE per candidate; SQLite serialises writers, so the second
    claimer's ``WHERE status = 'queued'`` matches nothing for rows the first one took.
    """
    if limit <= 0:
        return []
    queued = JobStatus.QUEUED.value
    # A retry waiting out its delay (``retry_job(not_before=...)``) is queued but not claimable yet.
    claimable = (Job.status == queued, or_(Job.not_before.is_(None), Job.not_before <= utcnow()))

    def values() -> dict[str, Any]:
        # Stamped after the rows were selected, never before: a job queued (or requeued) by another
        # writer between an early stamp and the SELECT would otherwise be dispatching "before" it
        # was queued (seen on a loaded machine as queued_at > dispatching_at).
        now = utcnow()
        return {"status": JobStatus.DISPATCHING.value, "dispatching_at": now, "updated_at": now,
                "claimed_by": claimer, "status_reason": None, "not_before": None}

    if session.get_bind().dialect.name == "postgresql":
        ids = list(
            session.scalars(
                select(Job.id)
                .where(*claimable)
                .order_by(Job.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            session.execute(update(Job).where(Job.id.in_(ids)).values(**values()))
    else:
        ids = []
        while len(ids) < limit:
            # Candidates are read outside the write lock, so another claimer may take some first;
            # once our first UPDATE holds the lock, re-reads are stable and the loop ends.
            candidates = list(
                session.scalars(
                    select(Job.id).where(*claimable).order_by(Job.id).limit(limit - len(ids))
                )
            )
            if not candidates:
                break
            for job_id in candidates:
                res = session.execute(
                    update(Job).where(Job.id == job_id, Job.status == queued).values(**values())
                )
                if res.rowcount == 1:
                    ids.append(job_id)
    for job_id in ids:
        _add_status_event(session, job_id, queued, JobStatus.DISPATCHING.value, claimer=claimer)
    session.commit()
    if not ids:
        return []
    stmt = select(Job).where(Job.id.in_(ids)).order_by(Job.id).execution_options(populate_existing=True)
    jobs = list(session.scalars(stmt))
    for job in jobs:
        _notify(job, queued, JobStatus.DISPATCHING.value)
    return jobs


def _add_status_event(session: Session, job_id: int, old: str, new: str, **extra: Any) -> None:
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id)) or 1
    data = {"from": old, "to": new} | {k: v for k, v in extra.items() if v is not None}
    session.add(
        JobEvent(job_id=job_id, attempt=attempt, seq=None, type="status", data=data, created_at=utcnow())
    )


def _notify(job: Job, old: str, new: str) -> None:
    for listener in transition_listeners:
        try:
            listener(job, old, new)
        except Exception:  # a metrics hook must never break a state change
            log.exception("transition listener failed", extra={"job_id": job.id})


def _cas(
    session: Session,
    job_id: int,
    decide: Callable[[Job], tuple[str, dict[str, Any]] | None],
    *,
    reason: str | None = None,
    error: str | None = None,
) -> Job:
    """Compare-and-set loop: ``decide(job)`` returns (target, extra column values) or None (no-op)."""
    for _ in range(_CAS_ATTEMPTS):
        job = get_job(session, job_id)
        current = job.status
        decision = decide(job)
        if decision is None:
            session.commit()  # ends the read transaction (and keeps any same-status field update)
            job = get_job(session, job_id)
            session.commit()
            return job
        target, values = decision
        now = utcnow()
        values = {"status": target, "updated_at": now, f"{target}_at": now, "status_reason": reason} | values
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.status == current).values(**values)
        )
        if res.rowcount != 1:
            session.rollback()
            continue
        _add_status_event(session, job_id, current, target, reason=reason, error=error)
        if JobStatus(target) in TERMINAL:
            trials.close_open_trials(session, job, target)
        session.commit()
        job = get_job(session, job_id)
        session.commit()
        _notify(job, current, target)
        return job
    raise RuntimeError(f"job {job_id}: status kept changing under {_CAS_ATTEMPTS} update attempts")


def transition(
    session: Session,
    job_id: int,
    to_status: str,
    *,
    error: str | None = None,
    ray_job_id: str | None = None,
    reason: str | None = None,
    result: dict[str, Any] | None = None,
) -> Job:
    """Move a job to ``to_status`` (stamping ``<status>_at``); same-status is a no-op that still
    records a given ``ray_job_id``/``error``. ``result`` (the final metrics) is written in the same
    commit as the status. Raises IllegalTransition or JobNotFound."""
    target = parse_status(to_status).value

    def decide(job: Job) -> tuple[str, dict[str, Any]] | None:
        if job.status == target:
            extra = {k: v for k, v in (("ray_job_id", ray_job_id), ("error", error)) if v is not None}
            if extra:
                session.execute(update(Job).where(Job.id == job.id).values(**extra))
            return None
        check_transition(job.status, target, job_id=job.id)
        values: dict[str, Any] = {}
        if ray_job_id is not None:
            values["ray_job_id"] = ray_job_id
        if target == JobStatus.FAILED.value:
            values["error"] = error or reason or "failed"
        elif error is not None:
            values["error"] = error
        if result is not None:
            values["result"] = sanitize_document(result)
        if target == JobStatus.QUEUED.value:
            values |= _requeue_reset(new_attempt=False)
        return target, values

    return _cas(session, job_id, decide, reason=reason, error=error)


class StaleAttempt(IllegalTransition):
    """A driver of an attempt that is no longer the job's current one reported (answered 409)."""

    def __init__(self, job: Job, attempt: int) -> None:
        super().__init__(
            job.id, job.status, job.status,
            message=f"job {job.id} is at attempt {job.attempt}; attempt {attempt} is no longer current",
        )
        self.attempt = attempt
        self.current_attempt = job.attempt


def check_attempt(job: Job, attempt: int | None) -> None:
    """Raise ``StaleAttempt`` when a driver of ``attempt`` speaks for ``job`` (None: not stated)."""
    if attempt is not None and attempt != job.attempt:
        raise StaleAttempt(job, attempt)


def driver_report(
    session: Session,
    job_id: int,
    to_status: str,
    *,
    attempt: int | None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    reason: str = "reported by the job driver",
) -> Job:
    """A job driver's status report: ``transition`` with the driver's fences, decided atomically.

    Refused (nothing written) when ``attempt`` is not the job's current attempt (``StaleAttempt``)
    or when the job has already ended (``IllegalTransition``: a late or repeated verdict must not
    rewrite the recorded one). A report of the status the job already has is a no-op."""
    target = parse_status(to_status).value

    def decide(job: Job) -> tuple[str, dict[str, Any]] | None:
        check_attempt(job, attempt)
        if JobStatus(job.status) in TERMINAL:
            raise IllegalTransition(
                job.id, job.status, target,
                message=f"job {job.id} already ended ({job.status}); its driver cannot report a status now",
            )
        if job.status == target:
            return None
        check_transition(job.status, target, job_id=job.id)
        values: dict[str, Any] = {}
        if target == JobStatus.FAILED.value:
            values["error"] = error or "failed"
        if result is not None:
            values["result"] = sanitize_document(result)
        return target, values

    return _cas(session, job_id, decide, reason=reason, error=error)


def _requeue_reset(*, new_attempt: bool) -> dict[str, Any]:
    """What a job going back to ``queued`` forgets; the previous error stays in its status events.

    Within an attempt (a submission that did not reach Ray, as far as we know) the driver token is
    kept: the submission may have reached Ray after all, and the Ray job the next submit adopts
    runs a driver holding exactly this token. A new attempt gets a new token at its submission;
    clearing the hash now locks the previous attempt's driver out at once."""
    reset: dict[str, Any] = {
        "ray_job_id": None,
        "claimed_by": None,
        "error": None,
        "result": None,
        "progress": None,
        "dispatching_at": None,
        "running_at": None,
        "cancelling_at": None,
        "succeeded_at": None,
        "failed_at": None,
        "cancelled_at": None,
        "not_before": None,
    }
    if new_attempt:
        reset["driver_token_hash"] = None
    return reset


def request_cancel(session: Session, job_id: int, *, reason: str | None = "cancelled by user") -> Job:
    """queued -> cancelled at once; dispatching/running -> cancelling (the dispatcher stops the Ray
    job); cancelling -> no-op; succeeded/failed/cancelled -> IllegalTransition."""

    def decide(job: Job) -> tuple[str, dict[str, Any]] | None:
        status = JobStatus(job.status)
        if status == JobStatus.QUEUED:
            return JobStatus.CANCELLED.value, {}
        if status in (JobStatus.DISPATCHING, JobStatus.RUNNING):
            return JobStatus.CANCELLING.value, {}
        if status == JobStatus.CANCELLING:
            return None
        raise IllegalTransition(
            job.id,
            job.status,
            JobStatus.CANCELLED.value,
            message=f"cannot cancel job {job.id}: it already finished with status {job.status}",
        )

    return _cas(session, job_id, decide, reason=reason)


def retry_job(
    session: Session, job_id: int, *, reason: str | None = "retry", not_before: datetime | None = None
) -> Job:
    """failed/cancelled -> queued as a new attempt (attempt + 1), to be claimed no earlier than
    ``not_before`` (None: at once)."""

    def decide(job: Job) -> tuple[str, dict[str, Any]] | None:
        if JobStatus(job.status) not in RETRYABLE:
            raise IllegalTransition(
                job.id,
                job.status,
                JobStatus.QUEUED.value,
                message=f"cannot retry job {job.id}: it is {job.status} (only failed or cancelled jobs)",
            )
        return JobStatus.QUEUED.value, _requeue_reset(new_attempt=True) | {
            "attempt": job.attempt + 1, "not_before": not_before}

    return _cas(session, job_id, decide, reason=reason)


def set_driver_token(session: Session, job_id: int, *, attempt: int, token_hash: str) -> bool:
    """Store attempt ``attempt``'s driver token hash; False (nothing written) when the job has
    moved on to another attempt meanwhile."""
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.attempt == attempt).values(driver_token_hash=token_hash)
    )
    session.commit()
    return res.rowcount == 1


def record_submission(session: Session, job_id: int, *, attempt: int, ray_job_id: str) -> Job | None:
    """Record the Ray job of attempt ``attempt`` on a job still active in that attempt; None when the
    job has moved on meanwhile (cancelled, re-queued, retried): then nobody will watch that Ray job
    and the caller must stop it."""
    active = [s.value for s in ACTIVE]
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(active))
        .values(ray_job_id=ray_job_id)
    )
    session.commit()
    if res.rowcount != 1:
        return None
    job = get_job(session, job_id)
    session.commit()
    return job
