"""Tokens: the users' API tokens (stored hashed; revocable, optionally expiring) and the per-job
driver tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.auth import principals
from service.core.security import hash_token, token_matches
from service.db.base import utcnow
from service.db.models import ApiToken, Job
from service.jobs.store import MAX_ID, JobNotFound, check_id


def set_job_token(session: Session, job_id: int, token_hash: str) -> None:
    check_id(job_id)
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


# last_used_at is a coarse "is this token still in use" signal: writing it on every request would
# turn each read into a write (and a lock on SQLite), so it moves at most once per this interval.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenRejected(Exception):
    """A presented API token that authenticates nobody; the message says why (for the 401)."""


def create_api_token(
    session: Session,
    name: str,
    token: str,
    *,
    is_admin: bool = False,
    expires_at: datetime | None = None,
    existing_owner: bool = False,
) -> ApiToken:
    """Store ``token`` (hashed) for a new owner called ``name`` -- or, with ``existing_owner``, as
    one more token of the existing owner of that name (``principals.OwnerExists`` /
    ``principals.NoSuchOwner`` when that does not hold). Generate the token with
    service.core.security.generate_token."""
    owner = principals.for_new_token(session, name, existing_owner=existing_owner)
    row = ApiToken(name=owner.name, principal_id=owner.id, token_hash=hash_token(token), is_admin=is_admin,
                   created_at=utcnow(), expires_at=expires_at)
    session.add(row)
    session.commit()
    return row


def ensure_api_token(session: Session, name: str, token: str, *, is_admin: bool = False) -> ApiToken:
    """Register ``token`` unless its hash is already stored (idempotent start-up provisioning of the
    service's own admin token: it joins the owner ``name``, existing or not)."""
    existing = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if existing is not None:
        return existing
    principals.ensure(session, name)
    try:
        return create_api_token(session, name, token, is_admin=is_admin, existing_owner=True)
    except IntegrityError:  # another replica registered it first
        session.rollback()
        return session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()


def verify_api_token(session: Session, token: str, *, now: datetime | None = None) -> ApiToken:
    """The token row for a presented bearer token, if it is active (not revoked, not expired);
    ``TokenRejected`` saying which otherwise. Records the use (``touch_last_used``)."""
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    return _active(session, row, now or utcnow())


def verify_token_id(session: Session, token_id: int, *, now: datetime | None = None) -> ApiToken:
    """``verify_api_token`` for a token already identified (a login session's, an open stream's):
    the row if it is still active, ``TokenRejected`` otherwise."""
    row = session.scalars(select(ApiToken).where(ApiToken.id == token_id)).first()
    return _active(session, row, now or utcnow())


def _active(session: Session, row: ApiToken | None, now: datetime) -> ApiToken:
    if row is None:
        session.commit()
        # Also what a deleted token gets (the wording older clients and scripts match on).
        raise TokenRejected("invalid or revoked token")
    if row.revoked_at is not None:
        session.commit()
        raise TokenRejected("token revoked")
    if row.expires_at is not None and row.expires_at <= now:
        session.commit()
        raise TokenRejected("token expired")
    touch_last_used(session, row, now)
    return row


def authenticate_token(session: Session, token: str, *, now: datetime | None = None) -> ApiToken | None:
    """The active token row for a presented bearer token, or None (revoked, expired or unknown)."""
    try:
        return verify_api_token(session, token, now=now)
    except TokenRejected:
        return None


def touch_last_used(session: Session, row: ApiToken, now: datetime) -> None:
    """Set ``last_used_at`` unless it is more recent than ``LAST_USED_RESOLUTION``; the condition is
    in the UPDATE, so concurrent requests (or replicas) write it once, not once each."""
    cutoff = now - LAST_USED_RESOLUTION
    if row.last_used_at is not None and row.last_used_at > cutoff:
        session.commit()  # ends the read transaction, as every function here does
        return
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == row.id, or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= cutoff))
        .values(last_used_at=now)
    )
    session.commit()
    set_committed_value(row, "last_used_at", now)  # the row reflects the write without re-flushing it


def revoke_api_token(session: Session, token_id: int, *, at: datetime | None = None) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=at or utcnow()))
    session.commit()


def revoke_api_tokens_named(session: Session, name: str, *, at: datetime | None = None) -> int:
    """Revoke every active token of the owner called ``name``; how many were revoked (0: none
    active)."""
    owner = principals.find(session, name)
    if owner is None:
        session.commit()
        return 0
    res = session.execute(
        update(ApiToken)
        .where(ApiToken.principal_id == owner.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=at or utcnow())
    )
    session.commit()
    return int(res.rowcount or 0)


def list_api_tokens(session: Session) -> list[ApiToken]:
    """Every token row (active, expired and revoked), oldest first."""
    rows = list(session.scalars(select(ApiToken).order_by(ApiToken.id)))
    session.commit()
    return rows
