"""Claiming queued jobs and submitting each attempt to Ray, fenced against the attempt before it.

A submission is ``<python> -m workers.jobs.driver --job-id ID`` under the deterministic
``submission_id`` of (job, attempt), so a submit whose answer was lost is found again and adopted
rather than submitted twice. One driver token per (job, attempt), handed over in a 0600 file under
the storage dir, never in the Ray job's environment; a requeue within the attempt keeps the token, a
new attempt gets a new one. A Ray job submitted for a job that moved on meanwhile is handed to
``Stops`` as an orphan, so it does not run unwatched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select

from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token
from service.db.models import Job, Principal
from service.dispatcher.context import ACTIVE_VALUES, DispatchContext, S
from service.dispatcher.ray_job import (
    driver_entrypoint,
    driver_env,
    entrypoint_resources,
    ray_metadata,
    submission_id,
)
from service.dispatcher.stops import Stops
from service.jobs import store, transitions
from service.ray_backend import RayJobExists, RayRequestError, RayUnavailable
from workers.contract import attempts

log = logging.getLogger(__name__)


class Submitter:
    def __init__(self, ctx: DispatchContext, stops: Stops) -> None:
        self.ctx, self.stops = ctx, stops
        self.ray_ok = True  # False after Ray failed to answer: claims wait for a ping to succeed

    def ray_down(self, exc: RayUnavailable) -> None:
        self.ray_ok = False
        self.ctx.health.record_error(f"Ray unavailable: {exc}")
        self.ctx.health.warn("ray", logging.WARNING, "Ray unavailable; will retry", exc=exc)

    def claim(self) -> list[Job]:
        """Claim queued jobs up to ``max_concurrent_jobs`` active (none while Ray does not answer)."""
        ctx = self.ctx
        if not self.ray_ok:
            # Ray failed to answer recently: claim nothing until it answers again, rather than
            # bounce jobs between dispatching and queued every pass.
            self.ray_ok = ctx.backend.ping()
            if not self.ray_ok:
                return []
        with ctx.session() as s:
            free = ctx.settings.max_concurrent_jobs - store.count_active_jobs(s)
            if free <= 0:
                return []
            return transitions.claim_queued_jobs(s, limit=free, claimer=ctx.claimer)

    def submit(self, job: Job) -> None:
        """Submit ``job``'s current attempt (claimed by us, dispatching), fenced against its
        previous attempt; it stays dispatching while that attempt's Ray job is being stopped."""
        ctx = self.ctx
        layout = ctx.settings.layout
        # First the marker, so a trainer of an older attempt stops writing while we wait for it.
        attempts.write_attempt_marker(layout.attempt_marker(job.id), job.attempt)
        try:
            if not self.stops.previous_attempt_stopped(job):
                return
        except RayUnavailable as e:
            self.ray_down(e)
            self.requeue(job, f"Ray unavailable at submission: {str(e)[:300]}")
            return
        sub_id = submission_id(job)
        token_file = self._issue_token(job, sub_id)
        if token_file is None:
            return  # the job went on to another attempt meanwhile
        cpus, gpus = entrypoint_resources(job.kind, job.spec)
        try:
            ray_id = ctx.backend.submit(
                driver_entrypoint(ctx.settings.driver_python, job.id), sub_id,
                env_vars=driver_env(ctx.settings, job, token_file), num_cpus=cpus, num_gpus=gpus or None,
                metadata=ray_metadata(ctx.settings, job, self._owner_name(job)),
            )
        except RayJobExists:
            ray_id = sub_id  # an earlier submit of this very attempt got through
        except RayUnavailable as e:
            self.ray_down(e)
            self._after_unknown_submit(job, sub_id, e)
            return
        except RayRequestError as e:
            ctx.transition(job.id, S.FAILED, error=f"Ray refused the job: {e}", reason="submission refused")
            return
        self.ray_ok = True
        if self.record_ray_id(job, ray_id):
            log.info("job submitted to Ray",
                     extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": ray_id})

    def _owner_name(self, job: Job) -> str | None:
        if job.owner_id is None:
            return None
        with self.ctx.session() as s:
            return s.scalar(select(Principal.name).where(Principal.id == job.owner_id))

    def _issue_token(self, job: Job, sub_id: str) -> Path | None:
        """The attempt's token file (reused by a resubmission of the attempt) with its hash on the
        job row; None when the job has moved on to another attempt."""
        path = self.ctx.settings.layout.driver_token_file(job.id, sub_id)
        token = attempts.issue_token_file(path, lambda: generate_token(DRIVER_TOKEN_PREFIX))
        with self.ctx.session() as s:
            if not transitions.set_driver_token(s, job.id, attempt=job.attempt, token_hash=hash_token(token)):
                return None
        attempts.remove_token_files(path.parent, keep=path)  # earlier attempts' tokens are dead
        return path

    def requeue(self, job: Job, reason: str) -> None:
        """Back to the queue within the same attempt (its driver token kept)."""
        self.stops.drop_fence(job.id)
        self.ctx.transition(job.id, S.QUEUED, reason=reason)

    def _after_unknown_submit(self, job: Job, sub_id: str, exc: RayUnavailable) -> None:
        """Ray did not answer a submit: it may have got through all the same."""
        current = self.ctx.get_job(job.id)
        if current.attempt != job.attempt:
            self.stops.add_orphan(job.id, job.attempt, sub_id)
        elif current.status == S.DISPATCHING:
            # Requeued in the same attempt, token kept: the next claim submits the same id and
            # adopts this Ray job if it exists; if the job ends first, it is stopped.
            self.stops.add_orphan(job.id, job.attempt, sub_id)
            self.requeue(job, f"Ray unavailable at submission: {str(exc)[:300]}")
        elif current.status in ACTIVE_VALUES:
            self.record_ray_id(job, sub_id)  # its driver already reported: it got through
        else:
            self.stops.add_orphan(job.id, job.attempt, sub_id)

    def record_ray_id(self, job: Job, ray_id: str) -> bool:
        """Record the Ray job of ``job``'s attempt; when the job moved on meanwhile, make sure
        that Ray job does not run unwatched. True when recorded."""
        with self.ctx.session() as s:
            if transitions.record_submission(s, job.id, attempt=job.attempt, ray_job_id=ray_id) is not None:
                self.stops.drop_orphan(job.id)
                return True
        log.info("the job moved on while its attempt was submitted",
                 extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": ray_id})
        self.stops.add_orphan(job.id, job.attempt, ray_id)
        self.stops.resolve_orphan(job.id)
        return False

    def find_lost_submission(self, job: Job) -> bool:
        """Adopt the Ray job of a submit whose answer we never recorded; True when found."""
        sub_id = submission_id(job)
        if self.ctx.backend.status(sub_id) is None:
            return False
        log.info("adopting a Ray job whose submission was not recorded",
                 extra={"job_id": job.id, "ray_job_id": sub_id})
        self.record_ray_id(job, sub_id)
        return True
