"""The FastAPI application: ``create_app(settings, start_dispatcher=...)``.

Start-up (lifespan): structured logging, migrations, the admin token, then -- only when
``start_dispatcher`` -- ``service.runtime.start(app, settings)`` (embedded Ray head + dispatcher,
written by the execution side and imported lazily so the API runs and is tested without Ray).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import docs, errors, metrics
from service.api.headers import SecurityHeaders
from service.api.routes import artifacts, compare, events, health, internal, jobs, trials
from service.auth import tokens
from service.core.config import Settings
from service.core.logging import configure_logging
from service.core.proxy import TrustedProxyHeaders
from service.core.security import generate_token
from service.db import migrate
from service.db.session import bound_waits, engine_options, make_engine, make_session_factory
from service.jobs import transitions
from service.ui import install as install_ui

log = logging.getLogger("service.main")


# ---------------------------------------------------------------------------------- middleware


class BodySizeLimit:
    """413 for bodies over ``max_bytes``: checks Content-Length, and counts chunked bodies too
    (buffering at most max_bytes + 1 bytes before replaying them to the app)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if too_big:
                await self._reject(send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        await _send_json(send, 413, {"detail": f"request body larger than {self.max_bytes} bytes"})


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = JSONResponse(payload).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestObserver:
    """Request latency histogram + one structured log line per API request (pure ASGI, so
    streaming responses such as SSE pass through untouched)."""

    QUIET = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.observe_request(elapsed, scope["method"], route, status)
            if scope["path"] not in self.QUIET:
                log.info(
                    "request",
                    extra={"method": scope["method"], "path": scope["path"], "route": route,
                           "status": status, "ms": round(elapsed * 1000, 1)},
                )


# -------------------------------------------------------------------------------------- startup


def ensure_admin_token(app: FastAPI, settings: Settings) -> str | None:
    """Provision the admin token; returns the token file's path when one was written/used.

    Production: RAMP_ADMIN_TOKEN is registered (hashed). Embedded: a token is created on first
    start and written to ``admin_token_file`` (0600); later starts re-register it if the DB is new.
    """
    factory = app.state.session_factory
    if settings.admin_token:
        with factory() as session:
            tokens.ensure_api_token(session, "admin", settings.admin_token, is_admin=True)
        return None
    if not settings.embedded:
        log.info("no admin token configured; create one with `rampctl token create NAME`")
        return None
    path = settings.admin_token_file
    assert path is not None
    token = path.read_text().strip() if path.is_file() else ""
    if not token:
        token = generate_token()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.chmod(path, 0o600)
        log.info("admin token created", extra={"token_file": str(path)})
    with factory() as session:
        tokens.ensure_api_token(session, "admin", token, is_admin=True)
    log.info("admin token ready", extra={"token_file": str(path)})
    return str(path)


def create_app(settings: Settings | None = None, *, start_dispatcher: bool = True) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    url = str(settings.database_url)
    engine = make_engine(url, **engine_options(
        url, connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s, pool_timeout_s=settings.db_pool_timeout_s,
        pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
    ))
    if engine.dialect.name == "postgresql":  # no request (nor the dispatcher) waits on a silent database
        bound_waits(connect_s=settings.db_connect_timeout_s,
                    answer_s=settings.db_statement_timeout_s + settings.db_connect_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_migrations:
            await run_in_threadpool(migrate.upgrade, str(settings.database_url))
        await run_in_threadpool(ensure_admin_token, app, settings)
        if metrics.observe_transition not in transitions.transition_listeners:
            transitions.transition_listeners.append(metrics.observe_transition)
        runtime = None
        if start_dispatcher:
            from service import runtime as runtime_module  # imports Ray lazily, only when needed

            runtime = runtime_module
            await run_in_threadpool(runtime.start, app, settings)
        log.info(
            "service started",
            extra={
                "database": engine.url.render_as_string(hide_password=True),
                "dispatcher": start_dispatcher,
            },
        )
        try:
            yield
        finally:
            if runtime is not None:
                await run_in_threadpool(runtime.stop, app)
            engine.dispose()
            log.info("service stopped")

    app = FastAPI(
        title="RAMP Orchestrator",
        version="0.1.0",
        description="Train, fine-tune and evaluate multi-norm robust classifiers on Ray. See docs/api.md.",
        lifespan=lifespan,
        docs_url=None,  # served from the package's own assets by service.api.docs, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.backend = None

    app.add_middleware(RequestObserver)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)  # the 413s above carry them too
    if settings.trusted_proxies:  # outermost: everything inside sees the client, scheme and host
        app.add_middleware(TrustedProxyHeaders, trusted=settings.trusted_proxies)
    errors.install(app, retry_after_s=settings.retry_after_s)
    errors.document(app)
    app.include_router(health.router)
    app.include_router(compare.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(artifacts.router)
    app.include_router(trials.router)
    app.include_router(internal.router)
    install_ui(app)
    docs.install(app)
    return app
