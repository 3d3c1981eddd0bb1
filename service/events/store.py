"""A job's event log: what drivers report (de-duplicated by attempt and seq) and the service's own
status events, read back in order.

Event data is made storable first (``service.db.jsonsafe``: NaN / Infinity -> null, listed under
``nonfinite``), so the progress copied onto the job row and the trial metrics a sweep's events
update are storable too; one odd number never costs the batch it came in."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.jsonsafe import sanitize_document
from service.db.models import Job, JobEvent
from service.jobs.store import get_job
from service.sweeps import trials
from workers.contract.events import EVENT_TYPES


def _validate_event(job_id: int, event: dict[str, Any]) -> tuple[int | None, str, dict[str, Any]]:
    etype = event.get("type")
    if etype not in EVENT_TYPES:
        raise ValueError(f"job {job_id}: event type {etype!r} not one of {', '.join(sorted(EVENT_TYPES))}")
    seq = event.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise ValueError(f"job {job_id}: event seq must be an integer, got {seq!r}")
    data = event.get("data") or {}
    if not isinstance(data, dict):
        raise ValueError(f"job {job_id}: event data must be an object, got {type(data).__name__}")
    return seq, etype, sanitize_document(data) or {}


def add_events(session: Session, job_id: int, events: list[dict[str, Any]]) -> None:
    """Append events, skipping any whose (attempt, seq) is already stored (re-sent batches).

    Each event: {"seq": int, "type": ..., "data": {...}} and optionally "attempt" (default: the
    job's current attempt). The latest progress event is also copied onto the job row.
    """
    for _ in range(3):
        job = get_job(session, job_id)
        prepared = []
        for ev in events:
            seq, etype, data = _validate_event(job_id, ev)
            attempt = ev.get("attempt", job.attempt)
            if isinstance(attempt, bool) or not isinstance(attempt, int):
                raise ValueError(f"job {job_id}: event attempt must be an integer, got {attempt!r}")
            prepared.append((attempt, seq, etype, data))
        wanted = {(a, s) for a, s, _, _ in prepared if s is not None}
        seen: set[tuple[int, int]] = set()
        if wanted:
            rows = session.execute(
                select(JobEvent.attempt, JobEvent.seq).where(
                    JobEvent.job_id == job_id,
                    JobEvent.seq.in_({s for _, s in wanted}),
                )
            ).all()
            seen = {(a, s) for a, s in rows}
        progress = None
        trial_events: list[tuple[int, dict[str, Any]]] = []
        now = utcnow()
        for attempt, seq, etype, data in prepared:
            if seq is not None:
                if (attempt, seq) in seen:
                    continue
                seen.add((attempt, seq))
            session.add(
                JobEvent(job_id=job_id, attempt=attempt, seq=seq, type=etype, data=data, created_at=now)
            )
            if etype == "progress" and attempt == job.attempt:
                progress = data
            elif etype == "trial":
                trial_events.append((attempt, data))
        trials.apply_trial_events(session, job, trial_events)
        if progress is not None:
            session.execute(update(Job).where(Job.id == job_id).values(progress=progress, updated_at=now))
        try:
            session.commit()
            return
        except IntegrityError:  # a concurrent duplicate post won the race; recompute what is new
            session.rollback()
    raise RuntimeError(f"job {job_id}: could not store events after concurrent duplicates")


def list_events(
    session: Session,
    job_id: int,
    *,
    after_seq: int | None = None,
    type: str | None = None,  # noqa: A002 - the contract's name
    limit: int = 100,
    after_id: int | None = None,
    attempt: int | None = None,
) -> list[JobEvent]:
    """Events in the order they were stored. ``after_seq`` filters on the driver's sequence number
    (service-recorded status events have none); ``after_id`` pages through everything."""
    get_job(session, job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id).limit(limit)
    if after_seq is not None:
        stmt = stmt.where(JobEvent.seq > after_seq)
    if after_id is not None:
        stmt = stmt.where(JobEvent.id > after_id)
    if type is not None:
        stmt = stmt.where(JobEvent.type == type)
    if attempt is not None:
        stmt = stmt.where(JobEvent.attempt == attempt)
    events = list(session.scalars(stmt))
    session.commit()
    return events
