"""Liveness, readiness and Prometheus metrics: open endpoints (no token)."""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import text

from service.api import metrics
from service.jobs import store

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0


@runtime_checkable
class ReadinessProbe(Protocol):
    """What /readyz asks about Ray: ``ping()`` returns normally (or True) when reachable."""

    def ping(self) -> Any: ...


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_db(request: Request) -> None:
    with request.app.state.session_factory() as session:
        session.execute(text("SELECT 1"))


def _check_ray(probe: ReadinessProbe) -> None:
    if probe.ping() is False:
        raise RuntimeError("ping returned False")


async def _run_check(fn: Any, *args: Any) -> str | None:
    try:
        with anyio.fail_after(PROBE_TIMEOUT_S):
            await run_in_threadpool(fn, *args)
    except TimeoutError:
        return f"timed out after {PROBE_TIMEOUT_S:.0f}s"
    except Exception as exc:  # any failure means not ready; say which
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    reasons: list[str] = []
    db_err = await _run_check(_check_db, request)
    checks["database"] = "ok" if db_err is None else "unreachable"
    if db_err:
        reasons.append(f"database: {db_err}")
    probe = getattr(request.app.state, "backend", None)
    if probe is None:
        checks["ray"] = "not configured"
    else:
        ray_err = await _run_check(_check_ray, probe)
        checks["ray"] = "ok" if ray_err is None else "unreachable"
        if ray_err:
            reasons.append(f"ray: {ray_err}")
    if reasons:
        log.warning("not ready", extra={"reasons": reasons})
        return JSONResponse({"status": "unavailable", "checks": checks, "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ok", "checks": checks})


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus_metrics(request: Request) -> Response:
    with request.app.state.session_factory() as session:
        counts = store.count_jobs_by_status(session)
    return Response(metrics.render(counts), media_type=metrics.CONTENT_TYPE)
