"""Shared request dependencies: settings, DB session, the caller's token (authenticated, then rate
limited) and the ``Principal`` it acts as, the Ray backend."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from service.auth import ratelimit, tokens
from service.auth.access import Principal
from service.core.config import Settings
from service.db.models import ApiToken
from service.db.session import session_scope


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.session_factory) as session:
        yield session


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
    """The caller's active API token (401 saying why not), within its rate limit (429 otherwise).
    Every /v1 router depends on it; FastAPI runs it once per request however often it is named."""
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    try:
        row = tokens.verify_api_token(session, token)
    except tokens.TokenRejected as exc:
        raise _unauthorized(str(exc)) from None
    request.state.token_id = row.id
    enforce_rate_limit(request, row.id)
    return row


def enforce_rate_limit(request: Request, token_id: int) -> None:
    """429 with ``Retry-After`` once token ``token_id`` exceeds RAMP_RATE_LIMIT_PER_MINUTE (the
    ``requests`` budget, shared by /v1 and the web pages)."""
    enforce_budget(request, "requests", token_id)


def enforce_budget(request: Request, budget: str, key: Hashable) -> None:
    """429 with ``Retry-After`` once ``key`` has spent ``budget`` (service.auth.ratelimit)."""
    refused = ratelimit.spend(request.app.state, request.app.state.settings, budget, key)
    if refused is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=refused.detail,
                            headers={"Retry-After": str(refused.retry_after_s)})


def get_principal(token: Annotated[ApiToken, Depends(get_current_token)]) -> Principal:
    """Whose jobs the caller sees and acts on (service.auth.access)."""
    return Principal.of(token)


def require_job_token(job_id: int, request: Request, session: Annotated[Session, Depends(get_db)]) -> int:
    """Driver auth: the per-job token is valid for its own job only (403 on any other). A job
    that does not exist gets the very same 403: the answer must not tell which ids exist."""
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing job token")
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
PrincipalDep = Annotated[Principal, Depends(get_principal)]
