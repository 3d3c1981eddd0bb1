"""The dispatcher's loop: moves queued jobs onto Ray and keeps the database in step with Ray.

One pass (``tick``), every ``dispatch_interval_s`` on a background thread:

1. watch every active job against Ray's view of its Ray job (``watch.Watcher``), and give failed
   jobs with retries left a new attempt (it resumes from the job's last checkpoint: the storage dir
   outlives attempts and the driver resumes when it finds a training state);
2. stop the Ray jobs no active job row records (``stops.Stops``: orphans);
3. claim queued jobs atomically (up to ``max_concurrent_jobs`` active) and submit each
   (``submit.Submitter``).

``reconcile()`` runs the watch once at start-up with "adopt" semantics, so jobs that finished
while the service was down get their results (result.json + the drivers' event spools) and jobs
still running stay tracked. Every status change goes through ``service.jobs.transitions`` (and thus
the state machine); a lost race (a cancel arriving mid-pass) is re-read and re-decided.

Failure handling (docs/internals.md, "Fencing and failure handling"): a pass that cannot reach the
database (or fails outside any one job) is recorded in ``health()`` (``health.LoopHealth``), logged
at most every ``warn_every_s``, and the next pass runs as usual, so the loop resumes by itself when
the database is back. The start-up reconciliation is retried with backoff until it succeeds. Ray
unreachable does not fail a pass: jobs stay queued (claims wait for Ray to answer a ping) and
running jobs stay running. An error while processing one job is that job's (``guard.JobGuard``).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.dispatcher.context import ACTIVE_VALUES, DispatchContext, S
from service.dispatcher.guard import JobGuard
from service.dispatcher.health import LoopHealth
from service.dispatcher.policy import DispatchPolicy
from service.dispatcher.stops import Stops
from service.dispatcher.submit import Submitter
from service.dispatcher.watch import Watcher
from service.jobs import store
from service.ray_backend import RayBackend, RayUnavailable

log = logging.getLogger(__name__)


def default_claimer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Dispatcher:
    session_factory: sessionmaker[Session]
    backend: RayBackend
    settings: Settings
    policy: DispatchPolicy = field(default_factory=DispatchPolicy)
    claimer: str = field(default_factory=lambda: default_claimer())
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._health = LoopHealth(self.policy, self.clock)
        self.ctx = DispatchContext(self.session_factory, self.backend, self.settings, self.policy,
                                   self.claimer, self.clock, self._health)
        self._rng = random.Random()
        self._tracked: set[int] = set()  # jobs seen active: one leaving the set may be due a retry
        self.guard = JobGuard(self.ctx, on_give_up=self._tracked.discard, rng=self._rng)
        self.stops = Stops(self.ctx)
        self.submitter = Submitter(self.ctx, self.stops)
        self.watcher = Watcher(self.ctx, self.stops, self.submitter)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._hurry = False
        self.ticks = 0

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ramp-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("dispatcher thread did not stop", extra={"timeout_s": timeout_s})
            self._thread = None

    def wake(self) -> None:
        """Run the next pass now (e.g. right after a submission)."""
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """The loop's heartbeat, for readiness probes (``LoopHealth.snapshot``)."""
        thread = self._thread
        return self._health.snapshot(running=thread is not None and thread.is_alive())

    def _run(self) -> None:
        self._reconcile_until_done()
        while not self._stop.is_set():
            self.tick()
            interval = self.policy.interval_s
            if self._hurry:
                interval = min(interval, self.policy.hurry_interval_s)
            self._wake.wait(interval)
            self._wake.clear()

    def _reconcile_until_done(self) -> None:
        """The start-up reconciliation, retried with backoff while the database or Ray is down:
        skipping it would leave jobs that ended meanwhile unrecorded until they are watched."""
        retry = 0
        while not self._stop.is_set():
            try:
                self.reconcile()
                return
            except Exception as e:  # anything: the loop must not die before it starts
                self._health.pass_failed("start-up reconciliation", e)
            self._stop.wait(self.policy.reconcile_backoff.delay(retry, self._rng.random()))
            retry += 1

    # ------------------------------------------------------------------------------ one pass

    def tick(self) -> bool:
        """One pass; never raises. False when it failed (the database unreachable, ...)."""
        self.ticks += 1
        try:
            try:
                self._watch_all(adopt=False)
                self._resolve_orphans()
                self._claim_and_submit()
            except RayUnavailable as e:
                self.submitter.ray_down(e)
        except Exception as e:  # the loop must survive anything one pass throws
            self._health.pass_failed("pass", e)
            return False
        self._health.pass_done()
        return True

    def reconcile(self) -> None:
        """Start-up: adopt every active job, finish what ended meanwhile, retry what is due.
        Raises when the database or Ray cannot be reached (the loop retries it)."""
        with self.ctx.session() as s:
            failed = store.retry_due_ids(s)
        for job_id in failed:
            self.guard.run(job_id, "retry", lambda job_id=job_id: self.watcher.retry(job_id))
        self._watch_all(adopt=True)
        self._health.reconciled = True
        self._health.pass_done()
        log.info("reconciled", extra={"tracked": sorted(self._tracked), "retried": failed})

    def _watch_all(self, *, adopt: bool) -> None:
        with self.ctx.session() as s:
            active = store.jobs_in_status(s, list(ACTIVE_VALUES))
        seen = {j.id for j in active}
        # Hurry only for submitted jobs waiting for Ray's RUNNING (not for fences or lost submits).
        self._hurry = any(j.status == S.DISPATCHING and j.ray_job_id is not None for j in active)
        for job in active:
            self._tracked.add(job.id)
            self.guard.run(job.id, "watch", lambda job=job: self.watcher.watch(job, adopt=adopt))
        for job_id in sorted(self._tracked - seen):
            self.guard.run(job_id, "retry", lambda job_id=job_id: self._left_active(job_id))

    def _left_active(self, job_id: int) -> None:
        self.watcher.left_active(job_id)
        self._tracked.discard(job_id)

    def _resolve_orphans(self) -> None:
        for job_id in self.stops.orphan_ids():
            self.guard.run(job_id, "stop an unwatched Ray job",
                           lambda job_id=job_id: self.stops.resolve_orphan(job_id))

    def _claim_and_submit(self) -> None:
        jobs = self.submitter.claim()
        for job in jobs:
            self._tracked.add(job.id)
            self.guard.run(job.id, "submit", lambda job=job: self.submitter.submit(job))
        self._hurry = self._hurry or bool(jobs)
