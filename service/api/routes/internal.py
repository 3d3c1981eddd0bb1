"""Endpoints the job drivers call, authenticated with the per-job token (valid for that job only).

A driver fetches its spec, streams events (progress / metrics / log / artifact, each with a
sequence number so re-sent batches are de-duplicated) and reports its status. Driver payloads are
sanitised rather than rejected: losing a report is worse than storing a replaced character.

Fences (docs/internals.md, "Fencing and failure handling"): the token is per attempt, and a driver
states its attempt in the ``X-Ramp-Attempt`` header; a call for an attempt that is no longer the
job's current one is answered 409 (``refusal: stale_attempt``). Once the job has ended, its driver
may still deliver late events, but a status report is answered 409 (``refusal: job_ended``) and
changes nothing. Every 409 body carries the job's ``status`` so a driver can tell "the job ended"
(stop) from "the service re-queued this attempt" (keep going: the attempt will be adopted).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.api import errors
from service.api.body import decode_json
from service.api.deps import SessionDep, SettingsDep, require_job_token
from service.api.schemas import DriverSpecOut, DriverStatusIn, EventsIn
from service.db.models import Job
from service.events import store as events
from service.jobs import store, transitions
from service.jobs.specs import SpecError, validation_errors, work_spec
from service.state import TERMINAL, IllegalTransition, JobStatus
from workers.contract.attempts import ATTEMPT_HEADER

log = logging.getLogger(__name__)
router = APIRouter(prefix="/internal/jobs", tags=["internal"])
JobAuth = Annotated[int, Depends(require_job_token)]
AttemptHeader = Annotated[int | None, Header(alias=ATTEMPT_HEADER, ge=1)]


async def _lenient_body(request: Request) -> Any:
    return decode_json(await request.body(), lenient=True)


def _parse(model: type[EventsIn] | type[DriverStatusIn], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise SpecError(validation_errors(exc, tagged=False)) from None


def _refused(exc: IllegalTransition, refusal: str, **extra: Any) -> JSONResponse:
    log.info("driver call refused", extra={"job_id": exc.job_id, "refusal": refusal, "error": str(exc)})
    return JSONResponse({"detail": str(exc), "status": exc.current, "refusal": refusal, **extra},
                        status_code=409)


def _stale(job: Job, attempt: int | None) -> JSONResponse | None:
    try:
        transitions.check_attempt(job, attempt)
    except transitions.StaleAttempt as exc:
        return _refused(exc, "stale_attempt", attempt=job.attempt)
    return None


@router.get("/{job_id}/spec", response_model=DriverSpecOut)
def driver_spec(
    job_id: JobAuth, session: SessionDep, settings: SettingsDep, attempt: AttemptHeader = None
) -> Any:
    job = store.get_job(session, job_id)
    if (refused := _stale(job, attempt)) is not None:
        return refused
    job_dir = settings.job_dir(job_id)
    return DriverSpecOut(
        job_id=job.id,
        kind=job.kind,
        attempt=job.attempt,
        status=job.status,
        resume=settings.layout.has_train_state(job_id),
        job_dir=str(job_dir),
        spec=job.spec,
        work_spec=work_spec(job.spec),
        resources=job.spec.get("resources", {}),
        path_roots=[str(root) for root in (*settings.path_policy.roots, settings.path_policy.storage)],
    )


@router.post("/{job_id}/events", openapi_extra=errors.request_body(EventsIn))
def driver_events(
    job_id: JobAuth, session: SessionDep, payload: Annotated[Any, Depends(_lenient_body)],
    attempt: AttemptHeader = None,
) -> Any:
    # Late events of an ended job are welcome (they complete its log); another attempt's are not.
    if (refused := _stale(store.get_job(session, job_id), attempt)) is not None:
        return refused
    batch = _parse(EventsIn, payload)
    events.add_events(session, job_id, [e.model_dump(exclude_none=True) for e in batch.events])
    return {"ok": True, "received": len(batch.events)}


@router.post("/{job_id}/status", openapi_extra=errors.request_body(DriverStatusIn))
def driver_status(
    job_id: JobAuth, session: SessionDep, payload: Annotated[Any, Depends(_lenient_body)],
    attempt: AttemptHeader = None,
) -> Any:
    report = _parse(DriverStatusIn, payload)
    failed = report.status == JobStatus.FAILED.value
    try:
        job = transitions.driver_report(
            session, job_id, report.status, attempt=attempt,
            error=report.error if failed else None,
            # In the status's own commit: a success is never visible without its metrics.
            result=report.metrics if report.status == JobStatus.SUCCEEDED.value else None,
        )
    except transitions.StaleAttempt as exc:
        return _refused(exc, "stale_attempt", attempt=exc.current_attempt)
    except IllegalTransition as exc:
        ended = JobStatus(exc.current) in TERMINAL
        return _refused(exc, "job_ended" if ended else "illegal_transition")
    log.info("driver status", extra={"job_id": job_id, "status": job.status, "reported": report.status})
    return {"ok": True, "status": job.status, "attempt": job.attempt}
