"""Watching one active job (dispatching / running / cancelling) against Ray's view of its Ray job,
and recording how it ended.

RUNNING -> ``running``; a finished Ray job -> the driver's verdict (its report, else its
``result.json``), else Ray's (FAILED with Ray's message); a job Ray no longer knows -> failed
("vanished"); ``cancelling`` -> stop the Ray job, then ``cancelled`` once Ray confirms. A failed
job with retries left is queued at once for a new attempt (it resumes from the job's last
checkpoint), to be claimed no earlier than ``policy.retry_delay_s`` after it failed: a lost node
must be declared dead by Ray before the retry is placed. Events a
driver spooled but never delivered are stored before the outcome is decided.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

from service.db.base import utcnow
from service.db.models import Job
from service.dispatcher.context import ACTIVE_VALUES, DispatchContext, S
from service.dispatcher.ray_job import submission_id
from service.dispatcher.stops import Stops
from service.dispatcher.submit import Submitter
from service.events import store as events
from service.jobs import store, transitions
from service.ray_backend import RAY_TERMINAL, RayJobInfo
from service.state import IllegalTransition
from workers.contract import outbox

log = logging.getLogger(__name__)

EVENT_CHUNK = 500


class Watcher:
    def __init__(self, ctx: DispatchContext, stops: Stops, submitter: Submitter) -> None:
        self.ctx, self.stops, self.submitter = ctx, stops, submitter

    def watch(self, job: Job, *, adopt: bool) -> None:
        if job.ray_job_id is None:
            self._watch_unsubmitted(job, adopt=adopt)
            return
        info = self.ctx.backend.info(job.ray_job_id)
        if info is None:
            self.finish(job, None)
        elif info.status in RAY_TERMINAL:
            self.finish(job, info)
        elif job.status == S.CANCELLING:
            self.stops.request_stop(job)
        elif info.status == "RUNNING" and job.status == S.DISPATCHING:
            self.ctx.transition(job.id, S.RUNNING, reason="Ray job running")

    def _watch_unsubmitted(self, job: Job, *, adopt: bool) -> None:
        """An active job without a recorded Ray job: claimed but not (yet) submitted, submitted
        but the answer lost, or cancelled in between."""
        ctx = self.ctx
        ours = job.claimed_by == ctx.claimer  # no submit of ours is in flight: one thread does both
        if not (adopt or ours) and _age(job.dispatching_at) < ctx.policy.submit_grace_s:
            return  # another replica's submission may be in flight
        if job.status == S.DISPATCHING and ours and not adopt:
            self.submitter.submit(job)  # waiting for the previous attempt to stop, or our submit failed
            return
        if self.submitter.find_lost_submission(job):
            return
        if job.status == S.CANCELLING:
            self.stops.drop_fence(job.id)
            ctx.transition(job.id, S.CANCELLED, reason="cancelled before it reached Ray")
        elif job.status == S.DISPATCHING:
            self.submitter.requeue(job, "submission did not reach Ray; queued again")
        else:  # running, yet Ray knows no submission of this attempt: it vanished
            self.finish(job, None)

    def left_active(self, job_id: int) -> None:
        """The job left the active set since the last pass (the driver reported, a user cancelled
        a queued job, ...): give a failure its automatic retry."""
        self.stops.forget_cancel(job_id)
        try:
            job = self.ctx.get_job(job_id)
        except store.JobNotFound:
            return
        if self.retry_due(job):
            self.retry(job_id)

    # ------------------------------------------------------------------------------ endings

    def finish(self, job: Job, info: RayJobInfo | None) -> None:
        """The Ray job ended (``info``) or vanished (None): record the outcome once."""
        ctx = self.ctx
        self.ingest_spools(job.id)
        job = ctx.get_job(job.id)
        if job.status not in ACTIVE_VALUES:
            return  # the driver's own report got there first
        result = outbox.read_result(ctx.job_dir(job.id), attempt=job.attempt)
        ray_status = info.status if info is not None else None
        if job.status == S.CANCELLING and (result is None or result["status"] != "succeeded"):
            ctx.transition(job.id, S.CANCELLED, reason=f"Ray job {ray_status or 'gone'} after stop")
            return
        if result is not None and result["status"] == "succeeded":
            ctx.transition(job.id, S.SUCCEEDED, reason="recorded from the driver's result file",
                           result=result.get("metrics") or {})
            return
        ray_job_id = job.ray_job_id or submission_id(job)
        if result is not None:
            error = str(result.get("error") or "the job driver failed")
        elif info is None:
            error = f"Ray job {ray_job_id} no longer exists (the Ray cluster was restarted?)"
        elif info.status == "SUCCEEDED":
            error = "the Ray job ended without reporting a result"
        elif info.status == "STOPPED":
            error = f"Ray job {ray_job_id} was stopped outside the service"
        else:
            error = f"Ray job failed: {(info.message or info.error_type or 'no message')[-4000:]}"
        ctx.transition(job.id, S.FAILED, error=error, reason=f"Ray job {ray_status or 'vanished'}")
        job = ctx.get_job(job.id)
        if self.retry_due(job):
            self.retry(job.id)

    def retry_due(self, job: Job) -> bool:
        return job.status == S.FAILED and job.attempt - 1 < job.max_retries

    def retry(self, job_id: int) -> None:
        try:
            with self.ctx.session() as s:
                job = store.get_job(s, job_id)
                not_before = (job.failed_at or utcnow()) + timedelta(seconds=self.ctx.policy.retry_delay_s)
                transitions.retry_job(
                    s, job_id, not_before=not_before,
                    reason=f"automatic retry {job.attempt}/{job.max_retries}, not before "
                           f"{not_before:%H:%M:%S} UTC, after: {job.error}",
                )
            log.info("job queued for another attempt", extra={"job_id": job_id, "attempt": job.attempt + 1})
        except IllegalTransition:
            pass  # somebody (a user) retried it first

    def ingest_spools(self, job_id: int) -> int:
        """Store events a driver spooled but never delivered (de-duplicated by seq)."""
        stored = 0
        for spool in outbox.spools(self.ctx.settings.layout.spool_dir(job_id)):
            pending = spool.pending()
            for i in range(0, len(pending), EVENT_CHUNK):
                chunk = pending[i : i + EVENT_CHUNK]
                try:
                    with self.ctx.session() as s:
                        events.add_events(s, job_id, chunk)
                except ValueError as e:
                    log.warning("skipping malformed spooled events",
                                extra={"job_id": job_id, "error": str(e)})
                with contextlib.suppress(OSError):  # a read-only storage mount: re-ingest is harmless
                    spool.ack(int(chunk[-1]["seq"]))
                stored += len(chunk)
        if stored:
            log.info("ingested spooled events", extra={"job_id": job_id, "events": stored})
        return stored


def _age(when: datetime | None) -> float:
    return float("inf") if when is None else (utcnow() - when).total_seconds()
