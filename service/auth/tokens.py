"""Tokens: the users' API tokens (stored hashed) and the per-job driver tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

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
