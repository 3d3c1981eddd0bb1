"""Jobs in the database: creating (idempotently), reading, listing with keyset cursors, counting.

Each mutating function is one unit of work: it commits before returning (or rolls back and raises),
so callers (API handlers, the dispatcher thread) never leave a transaction open. Status changes live
in ``service.jobs.transitions``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import RETRY_LEFT_SQL, ApiToken, IdempotencyKey, Job
from service.state import ACTIVE, JobStatus, parse_status

if TYPE_CHECKING:  # service.auth.access imports this module; store only calls Principal's methods
    from service.auth.access import Principal

# Ids beyond a signed 64-bit integer cannot exist (and SQLite's driver overflows on them).
MAX_ID = 2**63 - 1


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


class IdempotencyKeyInUse(Exception):
    """The key's scope holds another owner's job (a shared or re-used scope): never replayed,
    and the message names no job, so nothing about that job leaks."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"Idempotency-Key {key!r} is already in use; send a different key")


class InvalidCursor(ValueError):
    pass


def request_fingerprint(payload: Any) -> str:
    """Stable hash of a JSON-able request (key order does not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _spec_method(spec: dict[str, Any]) -> str | None:
    # A sweep is listed under its base spec's method (GET /v1/jobs?method=ramp finds RAMP sweeps).
    base = spec.get("base")
    method = spec.get("method", base.get("method") if isinstance(base, dict) else None)
    return method if isinstance(method, str) else None


def _new_job(spec: dict[str, Any], kind: str, token_id: int | None, owner_id: int | None) -> Job:
    now = utcnow()
    return Job(
        kind=kind,
        method=_spec_method(spec),
        spec=spec,
        status=JobStatus.QUEUED.value,
        attempt=1,
        max_retries=int(spec.get("max_retries") or 0),
        token_id=token_id,
        owner_id=owner_id,
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
    owner_id: int | None = None,
) -> tuple[Job, bool]:
    """Create a queued job; returns (job, created). A repeated key returns the first job.

    The unique (scope, key) constraint is the arbiter under a race: the loser's insert fails, it
    rolls back its job too, and returns the winner's. ``children(session, job)`` adds rows that
    belong to the new job (a sweep's trials) in the same transaction. ``owner_id`` defaults to the
    principal of token ``token_id`` (None without one: only admins see the job). A replay returns
    a job only to its own owner (``IdempotencyKeyInUse`` otherwise).
    """
    if owner_id is None:
        owner_id = _token_owner(session, token_id)
    if idempotency_key is None:
        job = _new_job(spec, kind, token_id, owner_id)
        session.add(job)
        if children is not None:
            session.flush()
            children(session, job)
        session.commit()
        return job, True
    scope = token_id or 0
    fingerprint = request_hash or request_fingerprint({"kind": kind, "spec": spec})
    existing = _idempotent_job(session, scope, idempotency_key, fingerprint, owner_id)
    if existing is not None:
        return existing, False
    job = _new_job(spec, kind, token_id, owner_id)
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
        existing = _idempotent_job(session, scope, idempotency_key, fingerprint, owner_id)
        if existing is None:  # the winner was deleted in between: nothing sensible to return
            raise
        return existing, False
    return job, True


def _token_owner(session: Session, token_id: int | None) -> int | None:
    return session.scalar(select(ApiToken.principal_id).where(ApiToken.id == token_id)) if token_id else None


def _idempotent_job(session: Session, scope: int, key: str, fingerprint: str,
                    owner_id: int | None) -> Job | None:
    row = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    ).first()
    if row is None:
        return None
    job = get_job(session, row.job_id)
    # Scopes are token ids, so this holds unless a scope is shared (no token: 0) or an id was
    # re-used; either way another owner's job must not come back, nor be named in a conflict.
    if job.owner_id != owner_id:
        raise IdempotencyKeyInUse(key)
    if row.request_hash != fingerprint:
        raise IdempotencyConflict(key, row.job_id)
    return job


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


def check_id(job_id: int) -> None:
    if not 0 < job_id <= MAX_ID:
        raise JobNotFound(job_id)


def get_job(session: Session, job_id: int) -> Job:
    check_id(job_id)
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
    principal: Principal | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; ``next_cursor`` is None on the last page. Only the jobs ``principal`` may
    see (``service.auth.access``); ``None`` lists every job and is for trusted internal callers
    only, never on behalf of a request."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if principal is not None:
        stmt = principal.visible(stmt)
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


def count_jobs_by_status(session: Session, statuses: Iterable[str] | None = None) -> dict[str, int]:
    """Jobs per status: every status, or only ``statuses`` (then each is one range of the
    ``(status, id)`` index, so counting the live ones costs what is live, not what is stored)."""
    stmt = select(Job.status, func.count()).group_by(Job.status)
    wanted = list(JobStatus) if statuses is None else [parse_status(s) for s in statuses]
    if statuses is not None:
        stmt = stmt.where(Job.status.in_([s.value for s in wanted]))
    counts = {s.value: 0 for s in wanted}
    counts.update({status: int(n) for status, n in session.execute(stmt).all()})
    return counts


def retry_due_ids(session: Session) -> list[int]:
    """Failed jobs with retries left (``attempt - 1 < max_retries``), oldest first: the failed
    range of the partial index ``ix_jobs_retry_due``, so neither a row nor a failed job without a
    retry left is visited (a history of failures costs nothing here)."""
    stmt = select(Job.id).where(Job.status == JobStatus.FAILED.value, text(RETRY_LEFT_SQL)).order_by(Job.id)
    return list(session.scalars(stmt))


def jobs_in_status(session: Session, statuses: Iterable[str]) -> list[Job]:
    values = [parse_status(s).value for s in statuses]
    return list(session.scalars(select(Job).where(Job.status.in_(values)).order_by(Job.id)))
