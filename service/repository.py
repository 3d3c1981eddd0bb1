"""Every database operation of the service, as plain functions taking a Session.

Each mutating function is one unit of work: it commits before returning (or rolls back and raises),
so callers (API handlers, the dispatcher thread) never leave a transaction open. Status changes go
through a compare-and-set UPDATE (``WHERE status = <what we read>``) so concurrent writers (an API
cancel racing the dispatcher) cannot overwrite each other; the loser re-reads and re-decides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import trials_repository
from service.core.security import hash_token, token_matches
from service.db.base import utcnow
from service.db.models import ApiToken, IdempotencyKey, Job, JobEvent
from service.state import (
    ACTIVE,
    RETRYABLE,
    TERMINAL,
    IllegalTransition,
    JobStatus,
    check_transition,
    parse_status,
)
from workers.contract.events import EVENT_TYPES

log = logging.getLogger(__name__)

# Ids beyond a signed 64-bit integer cannot exist (and SQLite's driver overflows on them).
MAX_ID = 2**63 - 1
# "trial": a sweep trial's progress (service.trials_repository applies it to the trial rows).
_CAS_ATTEMPTS = 20

# Called after every committed status change as (job, from_status, to_status); used for metrics.
TransitionListener = Callable[[Job, str, str], None]
transition_listeners: list[TransitionListener] = []


class JobNotFound(LookupError):
    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""

    def __init__(self, key: str, job_id: int) -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(
            f"Idempotency-Key {key!r} was already used for job {job_id} with a different request body"
        )


class InvalidCursor(ValueError):
    pass


# ---------------------------------------------------------------------------------------- jobs


def request_fingerprint(payload: Any) -> str:
    """Stable hash of a JSON-able request (key order does not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _spec_method(spec: dict[str, Any]) -> str | None:
    # A sweep is listed under its base spec's method (GET /v1/jobs?method=ramp finds RAMP sweeps).
    base = spec.get("base")
    method = spec.get("method", base.get("method") if isinstance(base, dict) else None)
    return method if isinstance(method, str) else None


def _new_job(spec: dict[str, Any], kind: str, token_id: int | None) -> Job:
    now = utcnow()
    return Job(
        kind=kind,
        method=_spec_method(spec),
        spec=spec,
        status=JobStatus.QUEUED.value,
        attempt=1,
        max_retries=int(spec.get("max_retries") or 0),
        token_id=token_id,
        created_at=now,
        updated_at=now,
        queued_at=now,
    )


def create_job_idempotent(
    session: Session,
    spec: dict[str, Any],
    *,
    kind: str,
    idempotency_key: str | None,
    token_id: int | None,
    request_hash: str | None = None,
    children: Callable[[Session, Job], None] | None = None,
) -> tuple[Job, bool]:
    """Create a queued job; returns (job, created). A repeated key returns the first job.

    The unique (scope, key) constraint is the arbiter under a race: the loser's insert fails, it
    rolls back its job too, and returns the winner's. ``children(session, job)`` adds rows that
    belong to the new job (a sweep's trials) in the same transaction.
    """
    if idempotency_key is None:
        job = _new_job(spec, kind, token_id)
        session.add(job)
        if children is not None:
            session.flush()
            children(session, job)
        session.commit()
        return job, True
    scope = token_id or 0
    fingerprint = request_hash or request_fingerprint({"kind": kind, "spec": spec})
    existing = _idempotent_job(session, scope, idempotency_key, fingerprint)
    if existing is not None:
        return existing, False
    job = _new_job(spec, kind, token_id)
    session.add(job)
    try:
        session.flush()
        session.add(
            IdempotencyKey(scope=scope, key=idempotency_key, request_hash=fingerprint, job_id=job.id)
        )
        if children is not None:
            children(session, job)
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _idempotent_job(session, scope, idempotency_key, fingerprint)
        if existing is None:  # the winner was deleted in between: nothing sensible to return
            raise
        return existing, False
    return job, True


def _idempotent_job(session: Session, scope: int, key: str, fingerprint: str) -> Job | None:
    row = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    ).first()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise IdempotencyConflict(key, row.job_id)
    return get_job(session, row.job_id)


def create_job(
    session: Session,
    spec: dict[str, Any],
    *,
    kind: str,
    idempotency_key: str | None,
    token_id: int | None,
) -> Job:
    return create_job_idempotent(
        session, spec, kind=kind, idempotency_key=idempotency_key, token_id=token_id
    )[0]


def _check_id(job_id: int) -> None:
    if not 0 < job_id <= MAX_ID:
        raise JobNotFound(job_id)


def get_job(session: Session, job_id: int) -> Job:
    _check_id(job_id)
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    return job


def encode_cursor(job_id: int) -> str:
    return base64.urlsafe_b64encode(f"j:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, value = raw.split(":", 1)
        if prefix != "j":
            raise ValueError(prefix)
        job_id = int(value)
        if not 0 <= job_id <= MAX_ID:
            raise ValueError(value)
        return job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None


def list_jobs(
    session: Session,
    *,
    status: str | Iterable[str] | None = None,
    kind: str | None = None,
    method: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Job], str | None]:
    """Newest first; ``next_cursor`` is None on the last page."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        stmt = stmt.where(Job.status.in_([parse_status(s).value for s in statuses]))
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if method is not None:
        stmt = stmt.where(Job.method == method)
    if cursor is not None:
        stmt = stmt.where(Job.id < decode_cursor(cursor))
    jobs = list(session.scalars(stmt))
    if len(jobs) > limit:
        jobs = jobs[:limit]
        return jobs, encode_cursor(jobs[-1].id)
    return jobs, None


def count_active_jobs(session: Session) -> int:
    stmt = select(func.count()).select_from(Job).where(Job.status.in_([s.value for s in ACTIVE]))
    return int(session.scalar(stmt) or 0)


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {s.value: 0 for s in JobStatus}
    counts.update({status: int(n) for status, n in rows})
    return counts


def jobs_in_status(session: Session, statuses: Iterable[str]) -> list[Job]:
    values = [parse_status(s).value for s in statuses]
    return list(session.scalars(select(Job).where(Job.status.in_(values)).order_by(Job.id)))


# ---------------------------------------------------------------------------------- transitions


def claim_queued_jobs(session: Session, *, limit: int, claimer: str) -> list[Job]:
    """Atomically move up to ``limit`` queued jobs (oldest first) to dispatching for ``claimer``.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent claimers take disjoint rows without
    waiting. SQLite: a conditional UPDATE per candidate; SQLite serialises writers, so the second
    claimer's ``WHERE status = 'queued'`` matches nothing for rows the first one took.
    """
    if limit <= 0:
        return []
    queued = JobStatus.QUEUED.value
    now = utcnow()
    values = {
        "status": JobStatus.DISPATCHING.value,
        "dispatching_at": now,
        "updated_at": now,
        "claimed_by": claimer,
        "status_reason": None,
    }
    if session.get_bind().dialect.name == "postgresql":
        ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.status == queued)
                .order_by(Job.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            session.execute(update(Job).where(Job.id.in_(ids)).values(**values))
    else:
        ids = []
        while len(ids) < limit:
            # Candidates are read outside the write lock, so another claimer may take some first;
            # once our first UPDATE holds the lock, re-reads are stable and the loop ends.
            candidates = list(
                session.scalars(
                    select(Job.id).where(Job.status == queued).order_by(Job.id).limit(limit - len(ids))
                )
            )
            if not candidates:
                break
            for job_id in candidates:
                res = session.execute(
                    update(Job).where(Job.id == job_id, Job.status == queued).values(**values)
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
            trials_repository.close_open_trials(session, job, target)
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
) -> Job:
    """Move a job to ``to_status`` (stamping ``<status>_at``); same-status is a no-op that still
    records a given ``ray_job_id``/``error``. Raises IllegalTransition or JobNotFound."""
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
        if target == JobStatus.QUEUED.value:
            values |= _requeue_reset()
        return target, values

    return _cas(session, job_id, decide, reason=reason, error=error)


def _requeue_reset() -> dict[str, Any]:
    # A new attempt starts clean; the previous error stays in the job's status events.
    return {
        "ray_job_id": None,
        "claimed_by": None,
        "driver_token_hash": None,
        "error": None,
        "result": None,
        "progress": None,
        "dispatching_at": None,
        "running_at": None,
        "cancelling_at": None,
        "succeeded_at": None,
        "failed_at": None,
        "cancelled_at": None,
    }


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


def retry_job(session: Session, job_id: int, *, reason: str | None = "retry") -> Job:
    """failed/cancelled -> queued as a new attempt (attempt + 1)."""

    def decide(job: Job) -> tuple[str, dict[str, Any]] | None:
        if JobStatus(job.status) not in RETRYABLE:
            raise IllegalTransition(
                job.id,
                job.status,
                JobStatus.QUEUED.value,
                message=f"cannot retry job {job.id}: it is {job.status} (only failed or cancelled jobs)",
            )
        return JobStatus.QUEUED.value, _requeue_reset() | {"attempt": job.attempt + 1}

    return _cas(session, job_id, decide, reason=reason)


# ------------------------------------------------------------------------------- driver tokens


def set_job_token(session: Session, job_id: int, token_hash: str) -> None:
    _check_id(job_id)
    res = session.execute(update(Job).where(Job.id == job_id).values(driver_token_hash=token_hash))
    if res.rowcount != 1:
        session.rollback()
        raise JobNotFound(job_id)
    session.commit()


def verify_job_token(session: Session, job_id: int, token: str) -> bool:
    if not 0 < job_id <= MAX_ID:
        return False
    stored = session.scalar(select(Job.driver_token_hash).where(Job.id == job_id))
    session.commit()
    return token_matches(token, stored)


# ------------------------------------------------------------------------------ events / result


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
    return seq, etype, data


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
        trials_repository.apply_trial_events(session, job, trial_events)
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


def set_result(session: Session, job_id: int, metrics: dict[str, Any]) -> None:
    _check_id(job_id)
    res = session.execute(update(Job).where(Job.id == job_id).values(result=metrics, updated_at=utcnow()))
    if res.rowcount != 1:
        session.rollback()
        raise JobNotFound(job_id)
    session.commit()


# ---------------------------------------------------------------------------------- API tokens


def create_api_token(
    session: Session, name: str, token: str, *, is_admin: bool = False
) -> ApiToken:
    """Store ``token`` (hashed). Generate the token with service.core.security.generate_token."""
    row = ApiToken(name=name, token_hash=hash_token(token), is_admin=is_admin, created_at=utcnow())
    session.add(row)
    session.commit()
    return row


def ensure_api_token(session: Session, name: str, token: str, *, is_admin: bool = False) -> ApiToken:
    """Register ``token`` unless its hash is already stored (idempotent start-up provisioning)."""
    existing = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if existing is not None:
        return existing
    try:
        return create_api_token(session, name, token, is_admin=is_admin)
    except IntegrityError:  # another replica registered it first
        session.rollback()
        return session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()


def authenticate_token(session: Session, token: str) -> ApiToken | None:
    """The active token row for a presented bearer token, or None."""
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    ).first()
    session.commit()
    return row


def revoke_api_token(session: Session, token_id: int, *, at: datetime | None = None) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=at or utcnow()))
    session.commit()
