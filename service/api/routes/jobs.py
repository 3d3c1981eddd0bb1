"""Public job endpoints: /v1/jobs ... (bearer token required on every route)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from service import repository, trials_repository
from service.api.deps import (
    SessionDep,
    SettingsDep,
    TokenDep,
    get_backend,
    get_current_token,
    wake_dispatcher,
)
from service.core.config import Settings
from service.db.models import Job, JobEvent
from service.schemas import (
    ArtifactListOut,
    ArtifactOut,
    EventListOut,
    EventOut,
    JobListOut,
    JobOut,
    MetricsOut,
    ResolvedCheckpoint,
    SpecError,
    SweepJob,
    build_stored_spec,
    build_sweep_spec,
    check_json_value,
    parse_job_request,
    sanitize_json,
)
from service.state import TERMINAL, JobStatus
from workers.contract.results import result_warnings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_current_token)])

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
SSE_KEEPALIVE_S = 15.0


# ------------------------------------------------------------------------------------ helpers


def job_out(job: Job, settings: Settings) -> JobOut:
    dashboard = None
    if job.ray_job_id and settings.ray_dashboard_url:
        dashboard = f"{settings.ray_dashboard_url.rstrip('/')}/#/jobs/{job.ray_job_id}"
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        status_reason=job.status_reason,
        attempt=job.attempt,
        max_retries=job.max_retries,
        spec=job.spec,
        progress=job.progress,
        metrics=job.result,
        warnings=result_warnings(job.result),
        error=job.error,
        ray_job_id=job.ray_job_id,
        ray_dashboard_url=dashboard,
        created_at=job.created_at,
        updated_at=job.updated_at,
        timings=job.timings(),
    )


def event_out(ev: JobEvent) -> EventOut:
    return EventOut(
        id=ev.id, attempt=ev.attempt, seq=ev.seq, type=ev.type, data=ev.data, created_at=ev.created_at
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _float_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def decode_json(body: bytes, *, lenient: bool = False) -> Any:
    """Strict JSON: no NaN/Infinity, finite floats only, bounded nesting; errors -> 400 / 422.

    ``lenient`` (driver reports): NaN/Infinity become null instead of an error, since a diverged
    loss is a fact to record, not a malformed request."""
    if not body.strip():
        raise HTTPException(400, detail="request body is empty: send a JSON object")
    try:
        if lenient:
            payload = json.loads(body, parse_float=_float_or_none, parse_constant=lambda _: None)
            return sanitize_json(payload)
        payload = json.loads(body, parse_float=_finite_float, parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPException(400, detail="invalid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, detail=f"invalid JSON: {str(exc)[:200]}") from None
    check_json_value(payload)
    return payload


async def json_body(request: Request) -> Any:
    return decode_json(await request.body())


def checkpoint_resolver(session: Session, settings: Settings):  # noqa: ANN201 - a closure
    """(job id, trial or None) -> the checkpoint a finetune/eval job starts from."""

    def resolve(job_id: int, trial: str | None) -> ResolvedCheckpoint:
        try:
            src = repository.get_job(session, job_id)
        except repository.JobNotFound:
            raise ValueError(f"job {job_id} does not exist") from None
        if src.kind == trials_repository.SWEEP_KIND:
            return _sweep_checkpoint(session, settings, src, trial)
        if trial is not None:
            raise ValueError(f"job {job_id} is a {src.kind} job; 'trial' names a trial of a sweep")
        if src.kind not in ("train", "finetune"):
            raise ValueError(
                f"job {job_id} is a {src.kind} job; only train/finetune jobs and sweeps make checkpoints"
            )
        if src.status != JobStatus.SUCCEEDED.value:
            raise ValueError(f"job {job_id} is {src.status}; its checkpoint is usable once it succeeded")
        return ResolvedCheckpoint(str(settings.layout.checkpoint_dir(job_id)))

    return resolve


def _sweep_checkpoint(
    session: Session, settings: Settings, sweep: Job, trial: str | None
) -> ResolvedCheckpoint:
    """A named trial's checkpoint (once that trial finished), else the best trial's (once the
    sweep succeeded: the best is only final then)."""
    if trial is None:
        if sweep.status != JobStatus.SUCCEEDED.value:
            raise ValueError(
                f"sweep {sweep.id} is {sweep.status}; its best checkpoint is usable once it succeeded "
                "(or name a finished trial with 'trial')"
            )
        trial = (sweep.result or {}).get("best_trial_id")
        if not isinstance(trial, str):
            rows = trials_repository.list_trials(session, sweep.id)
            metric, mode = sweep.spec.get("metric", "union"), sweep.spec.get("mode", "max")
            chosen = trials_repository.best(rows, metric, mode)
            if chosen is None:
                raise ValueError(f"sweep {sweep.id} has no trial that reported its metric")
            trial = chosen.trial_id
    try:
        row = trials_repository.get_trial(session, sweep.id, trial)
    except trials_repository.TrialNotFound as exc:
        raise ValueError(str(exc)) from None
    if row.status not in trials_repository.FINISHED_WITH_CHECKPOINT or not row.checkpoint:
        raise ValueError(
            f"trial {trial} of sweep {sweep.id} is {row.status}; its checkpoint is usable once it "
            "finished (succeeded, or stopped early by the scheduler)"
        )
    path = Path(row.checkpoint)
    return ResolvedCheckpoint(str(path if path.is_absolute() else settings.job_dir(sweep.id) / path), trial)


# ------------------------------------------------------------------------------------- routes


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={200: {"description": "replay of an earlier request with the same Idempotency-Key"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "description": "a job spec"}}},
        }
    },
)
def submit_job(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    payload: Annotated[Any, Depends(json_body)],
    token: TokenDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobOut:
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise HTTPException(400, detail="Idempotency-Key must be 1-255 printable ASCII characters")
    req = parse_job_request(payload)
    resolver = checkpoint_resolver(session, settings)
    children = None
    if isinstance(req, SweepJob):
        spec, trials = build_sweep_spec(req, resolve_checkpoint=resolver)

        def children(s: Session, job: Job) -> None:
            trials_repository.create_trials(s, job.id, trials)
    else:
        spec = build_stored_spec(req, resolve_checkpoint=resolver)
    job, created = repository.create_job_idempotent(
        session,
        spec,
        kind=req.kind,
        idempotency_key=idempotency_key,
        token_id=token.id,
        request_hash=repository.request_fingerprint(payload),
        children=children,
    )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if created:
        log.info("job submitted", extra={"job_id": job.id, "kind": job.kind, "method": job.method})
        wake_dispatcher(request)
    return job_out(job, settings)


@router.get("", response_model=JobListOut)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    status: Annotated[list[str] | None, Query(description="repeat or comma-separate")] = None,
    kind: str | None = None,
    method: str | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobListOut:
    statuses = None
    if status:
        statuses = [s.strip() for item in status for s in item.split(",") if s.strip()]
        for s in statuses:
            if s not in JobStatus.__members__.values():
                known = ", ".join(x.value for x in JobStatus)
                raise SpecError([("query.status", f"unknown status {s!r}; expected one of {known}")])
    jobs, next_cursor = repository.list_jobs(
        session, status=statuses, kind=kind, method=method, cursor=cursor, limit=limit
    )
    return JobListOut(jobs=[job_out(j, settings) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep, settings: SettingsDep) -> JobOut:
    return job_out(repository.get_job(session, job_id), settings)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: int, session: SessionDep, settings: SettingsDep) -> JobOut:
    job = repository.request_cancel(session, job_id)
    log.info("cancel requested", extra={"job_id": job_id, "status": job.status})
    return job_out(job, settings)


@router.post("/{job_id}/retry", response_model=JobOut)
def retry_job(job_id: int, request: Request, session: SessionDep, settings: SettingsDep) -> JobOut:
    job = repository.retry_job(session, job_id)
    log.info("retry requested", extra={"job_id": job_id, "attempt": job.attempt})
    wake_dispatcher(request)
    return job_out(job, settings)


@router.get("/{job_id}/metrics", response_model=MetricsOut)
def job_metrics(job_id: int, session: SessionDep) -> MetricsOut:
    job = repository.get_job(session, job_id)
    history: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = repository.list_events(session, job_id, type="metrics", after_id=after, limit=500)
        history += [{"attempt": ev.attempt, **ev.data} for ev in page]
        if len(page) < 500:
            break
        after = page[-1].id
    return MetricsOut(job_id=job.id, history=history, final=job.result)


@router.get("/{job_id}/events", response_model=EventListOut)
async def job_events(
    job_id: int,
    request: Request,
    after: Annotated[int | None, Query(ge=0, le=repository.MAX_ID, description="last event id seen")] = None,
    type: Annotated[str | None, Query()] = None,  # noqa: A002
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    follow: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Any:
    factory: sessionmaker[Session] = request.app.state.session_factory

    def page(after_id: int | None) -> tuple[list[EventOut], str]:
        with factory() as session:
            job = repository.get_job(session, job_id)
            evs = repository.list_events(session, job_id, after_id=after_id, type=type, limit=limit)
            return [event_out(e) for e in evs], job.status

    if not follow:
        events, _ = await run_in_threadpool(page, after)
        next_after = events[-1].id if len(events) == limit else None
        return EventListOut(events=events, next_after=next_after)

    if last_event_id is not None and last_event_id.isdigit() and len(last_event_id) < 19:
        after = int(last_event_id)
    first, _ = await run_in_threadpool(page, after)  # 404 now, not mid-stream
    poll = request.app.state.settings.sse_poll_interval_s
    return StreamingResponse(
        _sse(request, page, first, after, poll),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse_frame(ev: EventOut) -> str:
    return f"id: {ev.id}\nevent: {ev.type}\ndata: {ev.model_dump_json()}\n\n"


async def _sse(
    request: Request, page: Any, first: list[EventOut], after: int | None, poll: float
) -> AsyncIterator[str]:
    """Server-sent events until the job is terminal and every event has been sent."""
    events = first
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    while True:
        for ev in events:
            yield _sse_frame(ev)
            after = ev.id
        if events:
            last_write = loop.time()
        events, status = await run_in_threadpool(page, after)
        if events:
            continue
        if status in TERMINAL:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if await request.is_disconnected():
            return
        if loop.time() - last_write > SSE_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_write = loop.time()
        await asyncio.sleep(poll)


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(job_id: int, session: SessionDep, backend=Depends(get_backend)) -> PlainTextResponse:  # noqa: ANN001
    job = repository.get_job(session, job_id)
    if not job.ray_job_id:
        raise HTTPException(404, detail=f"job {job_id} has no Ray job yet (status {job.status})")
    try:
        text = backend.logs(job.ray_job_id)
    except Exception as exc:  # Ray unreachable or the job purged from its history
        detail = f"could not fetch logs from Ray: {type(exc).__name__}: {exc}"[:500]
        raise HTTPException(502, detail=detail) from None
    return PlainTextResponse(text or "")


# ------------------------------------------------------------------------------------ artifacts


def _list_artifacts(root: Path) -> list[ArtifactOut]:
    out: list[ArtifactOut] = []
    if not root.is_dir():
        return out
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                real = path.resolve(strict=True)
                real.relative_to(real_root)  # symlinks pointing outside are not artifacts
                st = real.stat()
            except (OSError, ValueError):
                continue
            if not real.is_file():
                continue
            out.append(
                ArtifactOut(
                    name=path.relative_to(root).as_posix(),
                    size=st.st_size,
                    modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
                )
            )
        dirnames.sort()
    out.sort(key=lambda a: a.name)
    return out


def safe_artifact_path(root: Path, name: str) -> Path:
    """The file ``name`` under ``root``; 400 for any name that could leave it, 404 if absent."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or len(name) > 1024:
        raise HTTPException(400, detail="invalid artifact name")
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") or p.startswith("~") for p in parts) or PurePosixPath(name).is_absolute():
        raise HTTPException(400, detail="artifact names must be relative paths inside the job's directory")
    candidate = root.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(404, detail=f"artifact {name!r} not found") from None
    try:
        real.relative_to(root.resolve())
    except ValueError:
        raise HTTPException(400, detail="artifact path leaves the job's directory") from None
    if not real.is_file():
        raise HTTPException(404, detail=f"artifact {name!r} not found")
    return real


@router.get("/{job_id}/artifacts", response_model=ArtifactListOut)
def list_artifacts(job_id: int, session: SessionDep, settings: SettingsDep) -> ArtifactListOut:
    repository.get_job(session, job_id)
    return ArtifactListOut(job_id=job_id, artifacts=_list_artifacts(settings.job_dir(job_id)))


@router.get("/{job_id}/artifacts/{name:path}")
def download_artifact(job_id: int, name: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    repository.get_job(session, job_id)
    path = safe_artifact_path(settings.job_dir(job_id), name)
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")
