"""Shared request dependencies: settings, DB session, the caller's token, the Ray backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from service.auth import tokens
from service.core.config import Settings
from service.db.models import ApiToken
from service.jobs import store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    session = request.app.state.session_factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer realm="ramp"'},
    )


def get_current_token(request: Request, session: Annotated[Session, Depends(get_db)]) -> ApiToken:
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    row = tokens.authenticate_token(session, token)
    if row is None:
        raise _unauthorized("invalid or revoked token")
    request.state.token_id = row.id
    return row


def require_job_token(job_id: int, request: Request, session: Annotated[Session, Depends(get_db)]) -> int:
    """Driver auth: the per-job token is valid for its own job only (403 on any other)."""
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing job token")
    store.get_job(session, job_id)  # 404 before 403: the job must exist
    if not tokens.verify_job_token(session, job_id, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"token is not valid for job {job_id}")
    return job_id


def get_backend(request: Request) -> Any:
    """The app's RayBackend (set by service.runtime at start-up); 503 when there is none."""
    backend = getattr(request.app.state, "backend", None)
    if backend is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="Ray backend is not available")
    return backend


def wake_dispatcher(request: Request) -> None:
    """Ask the dispatcher (when this process runs one) for a pass now instead of at its next tick:
    a new or retried job then starts without waiting out the dispatch interval."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
TokenDep = Annotated[ApiToken, Depends(get_current_token)]
