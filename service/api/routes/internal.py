"""Endpoints the job drivers call, authenticated with the per-job token (valid for that job only).

A driver fetches its spec, streams events (progress / metrics / log / artifact, each with a
sequence number so re-sent batches are de-duplicated) and reports its status. Driver payloads are
sanitised rather than rejected: losing a report is worse than storing a replaced character.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from service.api.body import decode_json
from service.api.deps import SessionDep, SettingsDep, require_job_token
from service.api.schemas import DriverSpecOut, DriverStatusIn, EventsIn
from service.events import store as events
from service.jobs import store, transitions
from service.jobs.specs import SpecError, validation_errors, work_spec
from service.state import JobStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/internal/jobs", tags=["internal"])
JobAuth = Annotated[int, Depends(require_job_token)]


async def _lenient_body(request: Request) -> Any:
    return decode_json(await request.body(), lenient=True)


def _parse(model: type[EventsIn] | type[DriverStatusIn], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise SpecError(validation_errors(exc, tagged=False)) from None


@router.get("/{job_id}/spec", response_model=DriverSpecOut)
def driver_spec(job_id: JobAuth, session: SessionDep, settings: SettingsDep) -> DriverSpecOut:
    job = store.get_job(session, job_id)
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
    )


@router.post("/{job_id}/events")
def driver_events(
    job_id: JobAuth, session: SessionDep, payload: Annotated[Any, Depends(_lenient_body)]
) -> dict[str, Any]:
    batch = _parse(EventsIn, payload)
    events.add_events(session, job_id, [e.model_dump(exclude_none=True) for e in batch.events])
    return {"ok": True, "received": len(batch.events)}


@router.post("/{job_id}/status")
def driver_status(
    job_id: JobAuth, session: SessionDep, payload: Annotated[Any, Depends(_lenient_body)]
) -> dict[str, Any]:
    report = _parse(DriverStatusIn, payload)
    succeeded = report.status == JobStatus.SUCCEEDED.value
    job = transitions.transition(
        session,
        job_id,
        report.status,
        error=report.error if report.status == JobStatus.FAILED.value else None,
        reason="reported by the job driver",
        result=report.metrics if succeeded else None,  # in the status's own commit
    )
    log.info("driver status", extra={"job_id": job_id, "status": job.status, "reported": report.status})
    return {"ok": True, "status": job.status, "attempt": job.attempt}
