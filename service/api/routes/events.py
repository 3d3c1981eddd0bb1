"""A job's events: GET /v1/jobs/{id}/events (a page, or a server-sent-events stream with
``follow=true``) and GET /v1/jobs/{id}/metrics (the per-epoch metrics history). Bearer token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import ServerSentEvent

from service.api.deps import PrincipalDep, SessionDep, get_current_token
from service.api.ids import parse_id
from service.api.schemas import EventListOut, EventOut, MetricsOut
from service.auth import tokens
from service.auth.access import owned_job
from service.events import store as events
from service.events import streams
from service.jobs import store
from workers.contract.status import is_settled

router = APIRouter(prefix="/v1/jobs", tags=["events"], dependencies=[Depends(get_current_token)])

SSE_KEEPALIVE_S = 15
# One event of the follow=true stream (the media type's schema describes each event).
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "the event's type, or `end` after the last one, or "
                  "`unauthorized` when the token was revoked or expired meanwhile (the stream ends)"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "the event as JSON (as in a page of events); for `end`: {\"status\": ...}; "
                 "for `unauthorized`: {\"detail\": ...}"},
        "id": {"type": "string", "description": "the event's id (what Last-Event-ID resumes after)"},
    },
}
Page = Callable[[int | None], tuple[list[EventOut], str | None]]


@router.get("/{job_id}/metrics", response_model=MetricsOut)
def job_metrics(job_id: int, session: SessionDep, principal: PrincipalDep) -> MetricsOut:
    job = owned_job(session, principal, job_id)
    history: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = events.list_events(session, job_id, type="metrics", after_id=after, limit=500)
        history += [{"attempt": ev.attempt, **ev.data} for ev in page]
        if len(page) < 500:
            break
        after = page[-1].id
    return MetricsOut(job_id=job.id, history=history, final=job.result)


@router.get(
    "/{job_id}/events",
    response_model=EventListOut,
    responses={200: {
        "description": "a page of events; with follow=true a server-sent-events stream",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }},
)
async def job_events(
    job_id: int,
    request: Request,
    principal: PrincipalDep,
    after: Annotated[int | None, Query(ge=0, le=store.MAX_ID, description="last event id seen")] = None,
    type: Annotated[str | None, Query()] = None,  # noqa: A002
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    follow: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Any:
    factory: sessionmaker[Session] = request.app.state.session_factory

    def page(after_id: int | None) -> tuple[list[EventOut], str | None]:
        """A page of events and the job's status once it is settled (None while it may change:
        a failure with an automatic retry left is not the end of the stream)."""
        # Every poll of a stream re-checks the job through the same rule as the first page.
        with factory() as session:
            job = owned_job(session, principal, job_id)
            evs = events.list_events(session, job_id, after_id=after_id, type=type, limit=limit)
            settled = is_settled(job.status, job.attempt, job.max_retries)
            return [EventOut.model_validate(e) for e in evs], job.status if settled else None

    if not follow:
        page_events, _ = await run_in_threadpool(page, after)
        next_after = page_events[-1].id if len(page_events) == limit else None
        return EventListOut(events=page_events, next_after=next_after)

    resume_after = parse_id(last_event_id) if last_event_id is not None else None
    if resume_after is not None:
        after = resume_after
    first, _ = await run_in_threadpool(page, after)  # 404 now, not mid-stream
    settings = request.app.state.settings
    try:  # at most so many open streams per token and per process (service.events.streams)
        lease = streams.gate_for(request.app.state, settings).admit(principal.token_id)
    except streams.StreamRefused as exc:
        raise HTTPException(exc.status, detail=exc.detail, headers={"Retry-After": str(exc.retry_after_s)}) \
            from None

    def verify_token() -> None:  # a revoked or expired token's stream ends (TokenRejected)
        with factory() as session:
            tokens.verify_token_id(session, principal.token_id or 0)

    recheck = streams.TokenRecheck(verify_token, settings.stream_auth_recheck_s)
    body = _stream(page, first, after, settings.sse_poll_interval_s, recheck)
    return streams.LeasedEventSource(lease, body, ping=SSE_KEEPALIVE_S,
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(page: Page, first: list[EventOut], after: int | None, poll: float,
                  recheck: streams.TokenRecheck) -> AsyncIterator[ServerSentEvent]:
    """Every event, then polled ones until the job is settled and all were sent; ``end`` last.
    Between polls the token is re-checked when due: once revoked or expired, an ``unauthorized``
    event saying which ends the stream. (sse-starlette sends the keep-alive pings and stops the
    generator when the client leaves.)"""
    batch = first
    while True:
        for ev in batch:
            yield ServerSentEvent(data=ev.model_dump_json(), event=ev.type, id=str(ev.id))
            after = ev.id
        if recheck.due():
            try:
                await run_in_threadpool(recheck.verify)
            except tokens.TokenRejected as exc:
                yield ServerSentEvent(data=json.dumps({"detail": str(exc)}), event="unauthorized")
                return
        batch, status = await run_in_threadpool(page, after)
        if batch:
            continue
        if status is not None:
            yield ServerSentEvent(data=json.dumps({"status": status}), event="end")
            return
        await asyncio.sleep(poll)
