"""The dispatcher: moves queued jobs onto Ray and keeps the database in step with Ray.

One pass (``tick``), every ``dispatch_interval_s`` on a background thread:

1. watch every active job (dispatching / running / cancelling) against Ray's view of its Ray job:
   RUNNING -> ``running``; a finished Ray job -> the driver's verdict (its report, else its
   ``result.json``), else Ray's (FAILED with Ray's message); a job Ray no longer knows -> failed
   ("vanished"); ``cancelling`` -> stop the Ray job, then ``cancelled`` once Ray confirms;
2. give failed jobs with retries left a new attempt (it resumes from the job's last checkpoint:
   the storage dir outlives attempts and the driver resumes when it finds a training state);
3. claim queued jobs atomically (up to ``max_concurrent_jobs`` active) and submit each as
   ``<python> -m workers.jobs.driver --job-id ID`` with a fresh per-job token.

``reconcile()`` runs the watch once at start-up with "adopt" semantics, so jobs that finished
while the service was down get their results (result.json + the drivers' event spools) and jobs
still running stay tracked. Every status change goes through ``service.jobs.transitions`` (and thus
the state machine); a lost race (a cancel arriving mid-pass) is re-read and re-decided.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.auth import tokens
from service.core.config import Settings
from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token
from service.db.base import utcnow
from service.db.models import Job
from service.db.session import session_scope
from service.events import store as events
from service.jobs import store, transitions
from service.ray_backend import (
    RAY_TERMINAL,
    RayBackend,
    RayJobExists,
    RayJobInfo,
    RayRequestError,
    RayUnavailable,
)
from service.state import ACTIVE, IllegalTransition, JobStatus
from workers.contract import outbox

log = logging.getLogger(__name__)

S = JobStatus
DRIVER_MODULE = "workers.jobs.driver"
EVENT_CHUNK = 500


@dataclass(frozen=True)
class DispatchPolicy:
    """Timings of the watch loop (seconds)."""

    interval_s: float = 1.0
    restop_every_s: float = 10.0  # re-issue a stop Ray has not acted on
    cancel_timeout_s: float = 60.0  # give up waiting for Ray to confirm a stop
    submit_grace_s: float = 30.0  # a dispatching job without Ray id older than this lost its submit
    warn_every_s: float = 30.0  # rate limit of "Ray unavailable" warnings
    # While a submitted job waits for Ray's RUNNING, poll this often: it is the latency users see.
    hurry_interval_s: float = 0.1


def default_claimer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def submission_id(job: Job) -> str:
    """Deterministic per (job, attempt), so a submit whose answer was lost can be found again.

    The creation time makes ids from two databases (a reset embedded DB, two installations
    sharing one Ray cluster) differ even for equal job ids.
    """
    stamp = hashlib.sha256(f"{job.id}:{job.created_at.isoformat()}".encode()).hexdigest()[:8]
    return f"ramp-{job.id}-a{job.attempt}-{stamp}"


def driver_entrypoint(python: str, job_id: int) -> str:
    return f"{shlex.quote(python)} -m {DRIVER_MODULE} --job-id {int(job_id)}"


def entrypoint_resources(kind: str, spec: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) the driver itself reserves on Ray.

    Training and sweeps run on Ray Train / Tune workers that reserve their own resources, so
    their driver reserves none (reserving them twice would deadlock a small cluster); an eval
    job runs in the driver and takes one worker's worth.
    """
    if kind in ("train", "finetune", "sweep"):
        return 0.0, 0.0
    res = spec.get("resources") or {}
    cpus = float(res.get("cpus_per_worker") or 1.0)
    gpus = 1.0 if res.get("use_gpu") else 0.0
    return cpus, gpus


def driver_env(settings: Settings, job: Job, token: str) -> dict[str, str]:
    return {
        "RAMP_SERVICE_URL": str(settings.public_url),
        "RAMP_JOB_TOKEN": token,
        "RAMP_STORAGE_DIR": str(settings.storage_dir),
        "RAMP_JOB_ID": str(job.id),
        "RAMP_JOB_ATTEMPT": str(job.attempt),
        # Ray's job stop sends SIGTERM and, by default, SIGKILL 3 s later: too soon for a Train
        # run to stop at its next step and keep its checkpoint.
        "RAY_JOB_STOP_WAIT_TIME_S": "60",
    }


@dataclass
class _Watch:
    """What the dispatcher remembers about a job between passes (lost on restart, by design)."""

    first_stop: float | None = None
    last_stop: float | None = None


@dataclass
class Dispatcher:
    session_factory: sessionmaker[Session]
    backend: RayBackend
    settings: Settings
    policy: DispatchPolicy = field(default_factory=DispatchPolicy)
    claimer: str = field(default_factory=lambda: default_claimer())
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._watches: dict[int, _Watch] = {}
        self._tracked: set[int] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = -float("inf")
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

    def _run(self) -> None:
        try:
            self.reconcile()
        except Exception:
            log.exception("start-up reconciliation failed; continuing with the normal loop")
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must survive anything one pass throws
                log.exception("dispatcher pass failed")
            interval = self.policy.interval_s
            if self._hurry:
                interval = min(interval, self.policy.hurry_interval_s)
            self._wake.wait(interval)
            self._wake.clear()

    def _session(self) -> contextlib.AbstractContextManager[Session]:
        return session_scope(self.session_factory)

    def _ray_down(self, exc: RayUnavailable) -> None:
        now = self.clock()
        if now - self._last_warning >= self.policy.warn_every_s:
            self._last_warning = now
            log.warning("Ray unavailable; will retry", extra={"error": str(exc)[:500]})

    # ------------------------------------------------------------------------------ one pass

    def tick(self) -> None:
        self.ticks += 1
        try:
            self._watch_all(adopt=False)
            self._claim_and_submit()
        except RayUnavailable as e:
            self._ray_down(e)

    def reconcile(self) -> None:
        """Start-up: adopt every active job, finish what ended meanwhile, retry what is due."""
        with self._session() as s:
            failed = [j.id for j in store.jobs_in_status(s, [S.FAILED.value]) if self._retry_due(j)]
        for job_id in failed:
            self._retry(job_id)
        try:
            self._watch_all(adopt=True)
        except RayUnavailable as e:
            self._ray_down(e)
        log.info("reconciled", extra={"tracked": sorted(self._tracked), "retried": failed})

    def _watch_all(self, *, adopt: bool) -> None:
        with self._session() as s:
            active = store.jobs_in_status(s, [st.value for st in ACTIVE])
        seen = {j.id for j in active}
        self._hurry = any(j.status == S.DISPATCHING for j in active)
        for job in active:
            self._tracked.add(job.id)
            try:
                self._watch(job, adopt=adopt)
            except (IllegalTransition, store.JobNotFound) as e:
                log.info("job changed under the dispatcher; re-deciding next pass",
                         extra={"job_id": job.id, "error": str(e)})
        # Jobs that left the active set since the last pass (the driver reported, a user
        # cancelled a queued job, ...): give failures their automatic retry.
        for job_id in sorted(self._tracked - seen):
            self._tracked.discard(job_id)
            self._watches.pop(job_id, None)
            with self._session() as s:
                try:
                    job = store.get_job(s, job_id)
                except store.JobNotFound:
                    continue
            if self._retry_due(job):
                self._retry(job_id)

    def _watch(self, job: Job, *, adopt: bool) -> None:
        if job.ray_job_id is None:
            self._watch_unsubmitted(job, adopt=adopt)
            return
        info = self.backend.info(job.ray_job_id)
        if info is None:
            self._finish(job, None)
        elif info.status in RAY_TERMINAL:
            self._finish(job, info)
        elif job.status == S.CANCELLING:
            self._request_stop(job)
        elif info.status == "RUNNING" and job.status == S.DISPATCHING:
            self._transition(job.id, S.RUNNING, reason="Ray job running")

    def _watch_unsubmitted(self, job: Job, *, adopt: bool) -> None:
        if job.status == S.CANCELLING:
            # Cancelled between claim and submit. A submit that did get through is adopted (and
            # stopped next pass); otherwise nothing runs on Ray and the cancel is complete.
            if not self._find_lost_submission(job):
                self._transition(job.id, S.CANCELLED, reason="cancelled before it reached Ray")
            return
        if job.status != S.DISPATCHING:
            return
        if not adopt and self._age(job.dispatching_at) < self.policy.submit_grace_s:
            return  # a submission may be in flight (another replica's)
        if not self._find_lost_submission(job):
            self._transition(job.id, S.QUEUED, reason="submission did not reach Ray; queued again")

    def _find_lost_submission(self, job: Job) -> bool:
        """Adopt the Ray job of a submit whose answer we never recorded; True when found."""
        sub_id = submission_id(job)
        if self.backend.status(sub_id) is None:
            return False
        log.info("adopting a Ray job submitted before a crash",
                 extra={"job_id": job.id, "ray_job_id": sub_id})
        self._record_ray_id(job.id, sub_id)
        return True

    def _age(self, when: datetime | None) -> float:
        return float("inf") if when is None else (utcnow() - when).total_seconds()

    # ------------------------------------------------------------------------------ endings

    def _finish(self, job: Job, info: RayJobInfo | None) -> None:
        """The Ray job ended (``info``) or vanished (None): record the outcome once."""
        self._ingest_spools(job.id)
        with self._session() as s:
            job = store.get_job(s, job.id)
        if job.status not in {st.value for st in ACTIVE}:
            return  # the driver's own report got there first
        result = outbox.read_result(self._job_dir(job.id), attempt=job.attempt)
        ray_status = info.status if info is not None else None
        if job.status == S.CANCELLING and (result is None or result["status"] != "succeeded"):
            self._transition(job.id, S.CANCELLED, reason=f"Ray job {ray_status or 'gone'} after stop")
            return
        if result is not None and result["status"] == "succeeded":
            self._transition(job.id, S.SUCCEEDED, reason="recorded from the driver's result file",
                             result=result.get("metrics") or {})
            return
        if result is not None:
            error = str(result.get("error") or "the job driver failed")
        elif info is None:
            error = f"Ray job {job.ray_job_id} no longer exists (the Ray cluster was restarted?)"
        elif info.status == "SUCCEEDED":
            error = "the Ray job ended without reporting a result"
        elif info.status == "STOPPED":
            error = f"Ray job {job.ray_job_id} was stopped outside the service"
        else:
            error = f"Ray job failed: {(info.message or info.error_type or 'no message')[-4000:]}"
        self._transition(job.id, S.FAILED, error=error, reason=f"Ray job {ray_status or 'vanished'}")
        with self._session() as s:
            job = store.get_job(s, job.id)
        if self._retry_due(job):
            self._retry(job.id)

    def _request_stop(self, job: Job) -> None:
        w = self._watches.setdefault(job.id, _Watch())
        now = self.clock()
        if w.first_stop is not None and now - w.first_stop > self.policy.cancel_timeout_s:
            reason = f"Ray did not confirm the stop within {self.policy.cancel_timeout_s:.0f} s"
            self._transition(job.id, S.CANCELLED, reason=reason)
            return
        if w.last_stop is None or now - w.last_stop >= self.policy.restop_every_s:
            assert job.ray_job_id is not None
            self.backend.stop(job.ray_job_id)
            w.first_stop = w.first_stop if w.first_stop is not None else now
            w.last_stop = now
            log.info("stopping Ray job", extra={"job_id": job.id, "ray_job_id": job.ray_job_id})

    def _retry_due(self, job: Job) -> bool:
        return job.status == S.FAILED and job.attempt - 1 < job.max_retries

    def _retry(self, job_id: int) -> None:
        try:
            with self._session() as s:
                job = store.get_job(s, job_id)
                transitions.retry_job(
                    s, job_id, reason=f"automatic retry {job.attempt}/{job.max_retries} after: {job.error}"
                )
            log.info("job queued for another attempt", extra={"job_id": job_id, "attempt": job.attempt + 1})
        except IllegalTransition:
            pass  # somebody (a user) retried it first

    def _ingest_spools(self, job_id: int) -> int:
        """Store events a driver spooled but never delivered (de-duplicated by seq)."""
        stored = 0
        for spool in outbox.spools(self.settings.layout.spool_dir(job_id)):
            pending = spool.pending()
            for i in range(0, len(pending), EVENT_CHUNK):
                chunk = pending[i : i + EVENT_CHUNK]
                try:
                    with self._session() as s:
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

    # ------------------------------------------------------------------------------ submitting

    def _claim_and_submit(self) -> None:
        with self._session() as s:
            free = self.settings.max_concurrent_jobs - store.count_active_jobs(s)
            if free <= 0:
                return
            jobs = transitions.claim_queued_jobs(s, limit=free, claimer=self.claimer)
        for job in jobs:
            self._tracked.add(job.id)
            self._submit(job)
        self._hurry = self._hurry or bool(jobs)

    def _submit(self, job: Job) -> None:
        token = generate_token(DRIVER_TOKEN_PREFIX)
        with self._session() as s:
            tokens.set_job_token(s, job.id, hash_token(token))
        cpus, gpus = entrypoint_resources(job.kind, job.spec)
        sub_id = submission_id(job)
        try:
            ray_id = self.backend.submit(
                driver_entrypoint(self.settings.driver_python, job.id), sub_id,
                env_vars=driver_env(self.settings, job, token), num_cpus=cpus, num_gpus=gpus or None,
                metadata={"ramp_job_id": str(job.id), "ramp_attempt": str(job.attempt)},
            )
        except RayJobExists:
            ray_id = sub_id  # an earlier submit of this very attempt got through
        except RayUnavailable as e:
            self._ray_down(e)
            self._transition(job.id, S.QUEUED, reason=f"Ray unavailable at submission: {str(e)[:300]}")
            return
        except RayRequestError as e:
            self._transition(job.id, S.FAILED, error=f"Ray refused the job: {e}", reason="submission refused")
            return
        self._record_ray_id(job.id, ray_id)
        log.info("job submitted to Ray",
                 extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": ray_id})

    def _record_ray_id(self, job_id: int, ray_id: str) -> None:
        # A same-status transition records the id; the job may have moved to cancelling meanwhile.
        for _ in range(3):
            with self._session() as s:
                current = store.get_job(s, job_id).status
                try:
                    transitions.transition(s, job_id, current, ray_job_id=ray_id)
                    return
                except IllegalTransition:
                    continue
        log.error("could not record the Ray job id", extra={"job_id": job_id, "ray_job_id": ray_id})

    # ------------------------------------------------------------------------------ helpers

    def _transition(
        self, job_id: int, to: str, *, error: str | None = None, reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        with self._session() as s:
            transitions.transition(s, job_id, str(to), error=error, reason=reason, result=result)
        log.info("job status", extra={"job_id": job_id, "status": str(to), "reason": reason})

    def _job_dir(self, job_id: int) -> Path:
        return self.settings.job_dir(job_id)
