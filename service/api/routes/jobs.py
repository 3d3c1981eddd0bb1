"""Public job endpoints: submit, list, read, cancel, retry, logs (bearer token on every route).
Events live in ``events.py``, files in ``artifacts.py``, sweep trials in ``trials.py``.

Tenancy (``service.auth.access``): a job is the submitting token's owner's; every route below
reaches jobs through ``owned_job`` or the owner-filtered listing, so another owner's job is a 404."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse

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
from service.auth.access import owned_job
from service.jobs import commands, store
from service.jobs.specs import SpecError
from service.ray_backend import RayUnavailable
from service.state import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_current_token)])


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
    try:
        done = commands.submit(session, settings, principal, token_id=token.id, payload=payload,
                               idempotency_key=idempotency_key)
    except commands.BadIdempotencyKey as exc:
        raise HTTPException(400, detail=str(exc)) from None
    except store.IdempotencyKeyInUse as exc:
        raise HTTPException(409, detail=str(exc)) from None
    response.status_code = 201 if done.created else 200
    response.headers["Location"] = f"/v1/jobs/{done.job.id}"
    if done.created:
        wake_dispatcher(request)
    return JobOut.of(done.job, settings.ray_dashboard_url)


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
    return JobOut.of(commands.cancel(session, principal, job_id), settings.ray_dashboard_url)


@router.post("/{job_id}/retry", response_model=JobOut)
def retry_job(
    job_id: int, request: Request, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> JobOut:
    job = commands.retry(session, principal, job_id)
    wake_dispatcher(request)
    return JobOut.of(job, settings.ray_dashboard_url)


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(
    job_id: int, request: Request, session: SessionDep, principal: PrincipalDep
) -> PlainTextResponse:
    try:
        text = commands.logs(session, principal, job_id, lambda: get_backend(request))
    except commands.NoRayJob as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except (store.JobNotFound, HTTPException):  # a 404, or get_backend's 503 (no backend here)
        raise
    except Exception as exc:  # Ray unreachable (503, worth a retry) or answering with an error (502)
        detail = f"could not fetch logs from Ray: {type(exc).__name__}: {exc}"[:500]
        raise HTTPException(503 if isinstance(exc, RayUnavailable) else 502, detail=detail) from None
    return PlainTextResponse(text)
