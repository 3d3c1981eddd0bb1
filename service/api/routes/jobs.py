"""Public job endpoints: submit, list, read, cancel, retry, logs (bearer token on every route).
Events live in ``events.py``, files in ``artifacts.py``, sweep trials in ``trials.py``.

Tenancy (``service.auth.access``): a job is the submitting token's owner's; every route below
reaches jobs through ``owned_job`` or the owner-filtered listing, so another owner's job is a 404."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

from service.api.body import json_body
from service.api.deps import (
    PrincipalDep,
    SessionDep,
    SettingsDep,
    TokenDep,
    get_backend,
    get_current_token,
    wake_dispatcher,
)
from service.api.schemas import JobListOut, JobOut, JobSummaryOut
from service.auth.access import guard_resolver, owned_job
from service.db.models import Job
from service.jobs import store, transitions
from service.jobs.checkpoints import checkpoint_resolver, recording
from service.jobs.paths import confine_submission
from service.jobs.specs import SpecError, SweepJob, build_stored_spec, build_sweep_spec, parse_job_request
from service.ray_backend import RayUnavailable
from service.state import JobStatus
from service.sweeps import trials

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_current_token)])

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


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
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobOut:
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise HTTPException(400, detail="Idempotency-Key must be 1-255 printable ASCII characters")
    req = parse_job_request(payload)
    # A spec may start from another job's checkpoint: only from a job the caller may see.
    resolver, resolved = recording(guard_resolver(session, principal, checkpoint_resolver(session, settings)))
    children = None
    trial_rows: list[dict[str, Any]] | None = None
    if isinstance(req, SweepJob):
        spec, trial_rows = build_sweep_spec(req, resolve_checkpoint=resolver)

        def children(s: Session, job: Job) -> None:
            trials.create_trials(s, job.id, trial_rows or [])
    else:
        spec = build_stored_spec(req, resolve_checkpoint=resolver)
    # Paths the user typed must lie under the data roots; paths resolved from job ids are trusted.
    if refused := confine_submission(spec, trial_rows, settings.path_policy, frozenset(resolved)):
        raise SpecError(refused)
    try:
        job, created = store.create_job_idempotent(
            session,
            spec,
            kind=req.kind,
            idempotency_key=idempotency_key,
            token_id=token.id,
            owner_id=principal.owner_id,
            request_hash=store.request_fingerprint(payload),
            children=children,
        )
    except store.IdempotencyKeyInUse as exc:
        raise HTTPException(409, detail=str(exc)) from None
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if created:
        log.info("job submitted", extra={"job_id": job.id, "kind": job.kind, "method": job.method})
        wake_dispatcher(request)
    return JobOut.of(job, settings.ray_dashboard_url)


@router.get("", response_model=JobListOut)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
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
    jobs, next_cursor = store.list_jobs(
        session, status=statuses, kind=kind, method=method, cursor=cursor, limit=limit, principal=principal
    )
    summaries = [JobSummaryOut.of(j, settings.ray_dashboard_url) for j in jobs]
    return JobListOut(jobs=summaries, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> JobOut:
    return JobOut.of(owned_job(session, principal, job_id), settings.ray_dashboard_url)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: int, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> JobOut:
    owned_job(session, principal, job_id)  # the owner never changes: checking before acting is safe
    job = transitions.request_cancel(session, job_id)
    log.info("cancel requested", extra={"job_id": job_id, "status": job.status})
    return JobOut.of(job, settings.ray_dashboard_url)


@router.post("/{job_id}/retry", response_model=JobOut)
def retry_job(
    job_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> JobOut:
    owned_job(session, principal, job_id)
    job = transitions.retry_job(session, job_id)
    log.info("retry requested", extra={"job_id": job_id, "attempt": job.attempt})
    wake_dispatcher(request)
    return JobOut.of(job, settings.ray_dashboard_url)


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(
    job_id: int, request: Request, session: SessionDep, principal: PrincipalDep
) -> PlainTextResponse:
    job = owned_job(session, principal, job_id)
    # Asked for after the ownership check, so another owner's job is a 404 even without Ray.
    backend = get_backend(request)
    if not job.ray_job_id:
        raise HTTPException(404, detail=f"job {job_id} has no Ray job yet (status {job.status})")
    try:
        text = backend.logs(job.ray_job_id)
    except Exception as exc:  # Ray unreachable (503, worth a retry) or answering with an error (502)
        detail = f"could not fetch logs from Ray: {type(exc).__name__}: {exc}"[:500]
        raise HTTPException(503 if isinstance(exc, RayUnavailable) else 502, detail=detail) from None
    return PlainTextResponse(text or "")
