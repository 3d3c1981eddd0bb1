"""Liveness, readiness and Prometheus metrics: open endpoints (no token).

``/readyz`` answers within ``READY_TIMEOUT_S`` whatever its dependencies do: the probes run
concurrently on their own small thread pool and a probe still running at the deadline is reported
as timed out (its thread is abandoned, not waited for). Not ready (503) means this process cannot
serve its API: the database is unreachable, or its dispatcher has stopped completing passes (or
has not completed its start-up reconciliation within the same bound; before that it is
``starting``, which makes the service ``degraded``, never ``ok``). Ray
being unreachable is reported (``degraded``, with the reason) but does not take the API out of
a load balancer: submissions are still accepted and queue until Ray returns.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from sqlalchemy import text

from service.api import metrics
from service.jobs import store

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
READY_TIMEOUT_S = 2.0
# A dispatcher that has not completed a pass for this long (or 20 intervals) is stuck.
DISPATCHER_STALE_S = 30.0
_PROBES = anyio.CapacityLimiter(4)  # abandoned probes cannot starve the request thread pool


@runtime_checkable
class ReadinessProbe(Protocol):
    """What /readyz asks about Ray: ``ping()`` returns normally (or True) when reachable."""

    def ping(self) -> Any: ...


class ReadyOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, str]
    reasons: list[str] = []


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_db(request: Request) -> None:
    with request.app.state.session_factory() as session:
        session.execute(text("SELECT 1"))


def _check_ray(probe: ReadinessProbe) -> None:
    if probe.ping() is False:  # RayJobsBackend keeps why: the reason a reader of /readyz needs
        raise ConnectionError(getattr(probe, "last_ping_error", None) or "ping returned False")


async def _probe(fn: Any, *args: Any) -> str | None:
    """None when ``fn`` returned within the deadline, else why not."""
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=_PROBES)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:.0f} s"
    except Exception as exc:  # any failure means not ready; say which
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


def _dispatcher_problem(dispatcher: Any, interval_s: float) -> tuple[str, str | None, bool]:
    """(check, problem, fatal) of the dispatcher's heartbeat.

    Before its start-up reconciliation completes the dispatcher is ``starting``: it has not yet
    adopted the jobs that were running, nor recorded those that ended meanwhile, so it is not ``ok``
    -- but the API serves, so it is only fatal (503) once that has taken longer than a stalled pass
    would."""
    health = dispatcher.health()
    age = health.get("last_pass_age_s")
    stale = max(DISPATCHER_STALE_S, 20 * interval_s)
    last = health.get("last_error")
    since_last = f" (last error: {last})" if last else ""
    if not health.get("reconciled", False):
        started = float(health.get("started_age_s") or 0.0)
        problem = f"start-up reconciliation not completed in {started:.0f} s since start{since_last}"
        if started > stale:
            return "stalled", problem, True
        return "starting", problem, False
    if age is not None and age > stale:
        return "stalled", f"last dispatcher pass completed {age:.0f} s ago{since_last}", True
    return "ok", None, False


@router.get("/readyz", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "not ready: reasons say why"}})
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    reasons: list[str] = []
    fatal = False
    probe = getattr(request.app.state, "backend", None)
    results: dict[str, str | None] = {}

    async def run(name: str, fn: Any, *args: Any) -> None:
        results[name] = await _probe(fn, *args)

    async with anyio.create_task_group() as group:
        group.start_soon(run, "database", _check_db, request)
        if probe is not None:
            group.start_soon(run, "ray", _check_ray, probe)

    checks["database"] = "ok" if results["database"] is None else "unreachable"
    if results["database"] is not None:
        fatal = True
        reasons.append(f"database: {results['database']}")
    if probe is None:
        checks["ray"] = "not configured"
    else:
        checks["ray"] = "ok" if results["ray"] is None else "unreachable"
        if results["ray"] is not None:
            reasons.append(f"ray: {results['ray']}; jobs are accepted and queue until Ray answers again")
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is None:
        checks["dispatcher"] = "not running in this process"
    else:
        interval_s = request.app.state.settings.dispatch_interval_s
        check, problem, stalled = _dispatcher_problem(dispatcher, interval_s)
        checks["dispatcher"] = check
        fatal = fatal or stalled
        if problem is not None:
            reasons.append(f"dispatcher: {problem}")
    status = "unavailable" if fatal else "degraded" if reasons else "ok"
    if reasons:
        log.warning("readiness", extra={"status": status, "reasons": reasons})
    body = ReadyOut(status=status, checks=checks, reasons=reasons).model_dump()
    return JSONResponse(body, status_code=503 if fatal else 200)


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus_metrics(request: Request) -> Response:
    with request.app.state.session_factory() as session:
        counts = store.count_jobs_by_status(session, metrics.LIVE)
    return Response(metrics.render(counts), media_type=metrics.CONTENT_TYPE)
