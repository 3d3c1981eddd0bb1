"""Login sessions of the web pages, kept by the server (``ui_sessions``).

Logging in with an API token starts a session; the browser's cookie holds only the session's id
(random, 256 bits; stored here as its SHA-256), never the token. A session acts as its token and
ends at the first of: its own expiry (``RAMP_UI_SESSION_HOURS``), logout, its token's revocation
or expiry (the token is re-checked on every request). So logging out, or revoking the token,
ends it on the server: a copied cookie is worth nothing afterwards.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from service.auth.tokens import TokenRejected, verify_token_id
from service.core.security import generate_token, hash_token
from service.db.base import utcnow
from service.db.models import ApiToken, UiSession

SESSION_PREFIX = "rampui_"
# Ended and expired rows are deleted when someone logs in, once they are this old.
KEEP_ENDED = timedelta(days=1)


def start(session: Session, token: ApiToken, *, lifetime: timedelta,
          now: datetime | None = None) -> tuple[str, datetime]:
    """A new session for ``token``: (its id for the cookie, when it expires)."""
    now = now or utcnow()
    expires_at = now + lifetime
    if token.expires_at is not None:
        expires_at = min(expires_at, token.expires_at)
    session_id = generate_token(SESSION_PREFIX)
    session.execute(delete(UiSession).where(or_(UiSession.expires_at < now - KEEP_ENDED,
                                                UiSession.ended_at < now - KEEP_ENDED)))
    session.add(UiSession(session_hash=hash_token(session_id), token_id=token.id, created_at=now,
                          expires_at=expires_at))
    session.commit()
    return session_id, expires_at


def resolve(session: Session, session_id: str, *, now: datetime | None = None) -> ApiToken | None:
    """The active token of a live session, or None (unknown, ended, expired, or its token revoked
    or expired)."""
    now = now or utcnow()
    row = session.scalars(select(UiSession).where(UiSession.session_hash == hash_token(session_id))).first()
    if row is None or row.ended_at is not None or row.expires_at <= now:
        session.commit()
        return None
    try:
        return verify_token_id(session, row.token_id, now=now)
    except TokenRejected:
        return None


def end(session: Session, session_id: str, *, now: datetime | None = None) -> bool:
    """Log out: the session stops working at once. False if it was not live."""
    res = session.execute(
        update(UiSession)
        .where(UiSession.session_hash == hash_token(session_id), UiSession.ended_at.is_(None))
        .values(ended_at=now or utcnow())
    )
    session.commit()
    return bool(res.rowcount)
