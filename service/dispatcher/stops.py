"""Ray jobs the dispatcher stops and waits to see stopped (re-asking every ``restop_every_s``):

- a cancelled job's (``request_stop``): ``cancelled`` once Ray confirms, or after
  ``cancel_timeout_s``;
- the previous attempt's, before the next attempt is submitted (``previous_attempt_stopped``, the
  fence): two attempts must not train into one checkpoint directory;
- orphans: a Ray job submitted for (job, attempt) that no active job row records, because the job
  moved on while it was being submitted (``resolve_orphan``).

What is being waited for lives in memory and is lost on restart, by design: the start-up
reconciliation decides afresh from the database and Ray.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from service.db.models import Job
from service.dispatcher.context import ACTIVE_VALUES, DispatchContext, S
from service.dispatcher.ray_job import submission_id
from service.jobs import store
from service.ray_backend import RAY_TERMINAL

log = logging.getLogger(__name__)


@dataclass
class StopWatch:
    """A stop being waited for: when it was first and last asked for."""

    first_stop: float | None = None
    last_stop: float | None = None

    def stop_due(self, now: float, every_s: float) -> bool:
        return self.last_stop is None or now - self.last_stop >= every_s

    def stopped(self, now: float) -> None:
        self.first_stop = now if self.first_stop is None else self.first_stop
        self.last_stop = now

    def waited(self, now: float) -> float:
        return 0.0 if self.first_stop is None else now - self.first_stop


@dataclass
class Orphan:
    """A Ray job submitted for (job, attempt) that no active job row records."""

    attempt: int
    ray_job_id: str
    watch: StopWatch = field(default_factory=StopWatch)


class Stops:
    def __init__(self, ctx: DispatchContext) -> None:
        self.ctx = ctx
        self._cancels: dict[int, StopWatch] = {}  # cancels waiting for Ray's stop
        self._fences: dict[int, StopWatch] = {}  # next attempts waiting for the previous Ray job to stop
        self._orphans: dict[int, Orphan] = {}

    # ------------------------------------------------------------------------------ cancels

    def request_stop(self, job: Job) -> None:
        """Stop a cancelling job's Ray job; ``cancelled`` when Ray has not confirmed in time."""
        ctx = self.ctx
        w = self._cancels.setdefault(job.id, StopWatch())
        now = ctx.clock()
        if w.waited(now) > ctx.policy.cancel_timeout_s:
            reason = f"Ray did not confirm the stop within {ctx.policy.cancel_timeout_s:.0f} s"
            ctx.transition(job.id, S.CANCELLED, reason=reason)
            return
        if w.stop_due(now, ctx.policy.restop_every_s):
            assert job.ray_job_id is not None
            ctx.backend.stop(job.ray_job_id)
            w.stopped(now)
            log.info("stopping Ray job", extra={"job_id": job.id, "ray_job_id": job.ray_job_id})

    def forget_cancel(self, job_id: int) -> None:
        self._cancels.pop(job_id, None)

    # ------------------------------------------------------------------------------ fences

    def previous_attempt_stopped(self, job: Job) -> bool:
        """True once attempt n-1's Ray job (if any) is terminal, or after ``fence_timeout_s`` of
        asking Ray to stop it: two attempts must not train into one checkpoint directory."""
        if job.attempt <= 1:
            return True
        ctx = self.ctx
        previous = submission_id(job, job.attempt - 1)
        info = ctx.backend.info(previous)
        if info is None or info.status in RAY_TERMINAL:
            self._fences.pop(job.id, None)
            return True
        w = self._fences.setdefault(job.id, StopWatch())
        now = ctx.clock()
        if w.waited(now) > ctx.policy.fence_timeout_s:
            log.warning("submitting the next attempt although the previous one's Ray job did not stop",
                        extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": previous,
                               "waited_s": round(w.waited(now), 1)})
            self._fences.pop(job.id, None)
            return True
        if w.stop_due(now, ctx.policy.restop_every_s):
            log.info("stopping the previous attempt's Ray job before the next attempt",
                     extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": previous})
            ctx.backend.stop(previous)
            w.stopped(now)
            info = ctx.backend.info(previous)  # a stop often takes effect at once
            if info is None or info.status in RAY_TERMINAL:
                self._fences.pop(job.id, None)
                return True
        return False

    def drop_fence(self, job_id: int) -> None:
        self._fences.pop(job_id, None)

    # ------------------------------------------------------------------------------ orphans

    def add_orphan(self, job_id: int, attempt: int, ray_job_id: str) -> None:
        self._orphans[job_id] = Orphan(attempt, ray_job_id)

    def drop_orphan(self, job_id: int) -> None:
        self._orphans.pop(job_id, None)

    def orphan_ids(self) -> list[int]:
        return sorted(self._orphans)

    def resolve_orphan(self, job_id: int) -> None:
        """Stop (and see stopped) a Ray job no active job row records, unless its job is queued in
        that attempt (the next claim adopts it) or active in it again."""
        orphan = self._orphans.get(job_id)
        if orphan is None:
            return
        ctx = self.ctx
        try:
            job: Job | None = ctx.get_job(job_id)
        except store.JobNotFound:
            job = None
        if job is not None and job.attempt == orphan.attempt:
            if job.status in ACTIVE_VALUES:
                self._orphans.pop(job_id, None)  # submitted again: the watch has it
                return
            if job.status == S.QUEUED:
                return
        info = ctx.backend.info(orphan.ray_job_id)
        now = ctx.clock()
        if info is None or info.status in RAY_TERMINAL:
            self._orphans.pop(job_id, None)
            return
        if orphan.watch.waited(now) > ctx.policy.cancel_timeout_s:
            log.error("Ray did not stop an unwatched Ray job", extra={"job_id": job_id,
                                                                      "ray_job_id": orphan.ray_job_id})
            self._orphans.pop(job_id, None)
            return
        if orphan.watch.stop_due(now, ctx.policy.restop_every_s):
            log.warning("stopping a Ray job whose job has moved on",
                        extra={"job_id": job_id, "attempt": orphan.attempt, "ray_job_id": orphan.ray_job_id,
                               "status": None if job is None else job.status})
            ctx.backend.stop(orphan.ray_job_id)
            orphan.watch.stopped(now)
