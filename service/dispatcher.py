"""The dispatcher: moves queued jobs onto Ray and keeps the database in step with Ray.

One pass (``tick``), every ``dispatch_interval_s`` on a background thread:

1. watch every active job (dispatching / running / cancelling) against Ray's view of its Ray job:
   RUNNING -> ``running``; a finished Ray job -> the driver's verdict (its report, else its
   ``result.json``), else Ray's (FAILED with Ray's message); a job Ray no longer knows -> failed
   ("vanished"); ``cancelling`` -> stop the Ray job, then ``cancelled`` once Ray confirms;
2. give failed jobs with retries left a new attempt (it resumes from the job's last checkpoint:
   the storage dir outlives attempts and the driver resumes when it finds a training state);
3. claim queued jobs atomically (up to ``max_concurrent_jobs`` active) and submit each as
   ``<python> -m workers.jobs.driver --job-id ID``.

``reconcile()`` runs the watch once at start-up with "adopt" semantics, so jobs that finished
while the service was down get their results (result.json + the drivers' event spools) and jobs
still running stay tracked. Every status change goes through ``service.jobs.transitions`` (and thus
the state machine); a lost race (a cancel arriving mid-pass) is re-read and re-decided.

Failure handling and fencing (docs/internals.md, "Fencing and failure handling"):

- A pass that cannot reach the database (or fails outside any one job) is recorded in ``health()``,
  logged at most every ``warn_every_s``, and the next pass runs as usual, so the loop resumes by
  itself when the database is back. The start-up reconciliation is retried with backoff until it
  succeeds. Ray unreachable does not fail a pass: jobs stay queued (claims wait for Ray to answer a
  ping) and running jobs stay running.
- An error while processing one job is that job's: logged with its id, counted, the job backed off
  (``job_backoff``) while the pass goes on; after ``max_job_errors`` errors in a row the job is
  failed with that error instead of looping forever.
- One driver token per (job, attempt), handed over in a 0600 file under the storage dir, never in
  the Ray job's environment. A requeue within the attempt keeps the token (a submit that timed out
  but reached Ray is adopted, with its driver); a new attempt gets a new one.
- Before attempt n > 1 is submitted, the job's attempt marker names n (a lingering trainer of an
  older attempt then refuses its next checkpoint write) and attempt n-1's Ray job is stopped and
  confirmed terminal (bounded by ``fence_timeout_s``).
- A Ray job submitted for a job that moved on meanwhile (cancelled, retried) is stopped, not left
  running unwatched; one whose job went back to the queue in the same attempt is left for the next
  claim to adopt, and stopped if the job ends first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
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

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

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
from workers.contract import attempts, outbox
from workers.contract.retry import RetryPolicy

log = logging.getLogger(__name__)

S = JobStatus
ACTIVE_VALUES = frozenset(s.value for s in ACTIVE)
DRIVER_MODULE = "workers.jobs.driver"
EVENT_CHUNK = 500


@dataclass(frozen=True)
class DispatchPolicy:
    """Timings of the watch loop (seconds) and its failure handling."""

    interval_s: float = 1.0
    restop_every_s: float = 10.0  # re-issue a stop Ray has not acted on
    cancel_timeout_s: float = 60.0  # give up waiting for Ray to confirm a stop
    # Another replica's dispatching job without a Ray id older than this has lost its submission.
    submit_grace_s: float = 30.0
    warn_every_s: float = 30.0  # rate limit of repeated warnings (Ray or the database down, a bad job)
    # While a submitted job waits for Ray's RUNNING, poll this often: it is the latency users see.
    hurry_interval_s: float = 0.1
    # Wait at most this long for the previous attempt's Ray job to stop before submitting the next
    # attempt anyway (its driver is locked out by then, its trainer by the attempt marker).
    fence_timeout_s: float = 60.0
    max_job_errors: int = 5  # errors in a row processing one job before it is failed
    job_backoff: RetryPolicy = RetryPolicy(base_s=1.0, factor=2.0, max_s=30.0, jitter=0.2)
    reconcile_backoff: RetryPolicy = RetryPolicy(base_s=0.5, factor=2.0, max_s=10.0, jitter=0.2)


def default_claimer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def submission_id(job: Job, attempt: int | None = None) -> str:
    """Deterministic per (job, attempt), so a submit whose answer was lost can be found again.

    The creation time makes ids from two databases (a reset embedded DB, two installations
    sharing one Ray cluster) differ even for equal job ids. ``attempt``: another attempt's id.
    """
    stamp = hashlib.sha256(f"{job.id}:{job.created_at.isoformat()}".encode()).hexdigest()[:8]
    return f"ramp-{job.id}-a{job.attempt if attempt is None else attempt}-{stamp}"


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


def driver_env(settings: Settings, job: Job, token_file: Path) -> dict[str, str]:
    """The Ray job's environment. No secret in it: Ray's Jobs API shows it to anyone who can list
    jobs, so the token travels as the path of a 0600 file on the shared storage."""
    return {
        "RAMP_SERVICE_URL": str(settings.public_url),
        "RAMP_JOB_TOKEN_FILE": str(token_file),
        "RAMP_STORAGE_DIR": str(settings.storage_dir),
        "RAMP_JOB_ID": str(job.id),
        "RAMP_JOB_ATTEMPT": str(job.attempt),
        # Ray's job stop sends SIGTERM and, by default, SIGKILL 3 s later: too soon for a Train
        # run to stop at its next step and keep its checkpoint.
        "RAY_JOB_STOP_WAIT_TIME_S": "60",
    }


def aborts_pass(exc: BaseException) -> bool:
    """Errors of the pass rather than of one job: Ray or the database cannot be reached."""
    if isinstance(exc, RayUnavailable | OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass
class _Watch:
    """A stop being waited for (a cancel, a fence); lost on restart, by design."""

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
class _Orphan:
    """A Ray job submitted for (job, attempt) that no active job row records."""

    attempt: int
    ray_job_id: str
    watch: _Watch = field(default_factory=_Watch)


@dataclass
class Dispatcher:
    session_factory: sessionmaker[Session]
    backend: RayBackend
    settings: Settings
    policy: DispatchPolicy = field(default_factory=DispatchPolicy)
    claimer: str = field(default_factory=lambda: default_claimer())
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._watches: dict[int, _Watch] = {}  # cancels waiting for Ray's stop
        self._fences: dict[int, _Watch] = {}  # next attempts waiting for the previous Ray job to stop
        self._orphans: dict[int, _Orphan] = {}
        self._tracked: set[int] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._hurry = False
        self._ray_ok = True  # False after Ray failed to answer: claims wait for a ping to succeed
        self._rng = random.Random()
        # Per-job errors: consecutive count and the time before which the job is left alone.
        self._job_errors: dict[int, int] = {}
        self._job_retry_at: dict[int, float] = {}
        # Rate-limited warnings: key -> (last logged, suppressed since).
        self._warned: dict[str, tuple[float, int]] = {}
        # Health (read by /readyz from another thread: plain attributes, replaced atomically).
        self.ticks = 0
        self.passes = 0
        self.job_errors = 0
        self.reconciled = False
        self.consecutive_errors = 0
        self._last_pass_at: float | None = None
        self._last_error: tuple[float, str] | None = None

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
        """The loop's heartbeat, for readiness probes.

        ``passes``: completed passes (the start-up reconciliation included); ``last_pass_age_s``:
        seconds since the last one completed (None before the first); ``last_error`` and
        ``last_error_age_s``: the latest error of a pass, of Ray or of one job (kept after
        recovery); ``consecutive_errors``: failed passes since the last completed one (0 when
        healthy); ``job_errors``: errors processing single jobs so far; ``reconciled``: the start-up
        reconciliation has completed; ``running``: the loop's thread is alive."""
        now = self.clock()
        last_pass, last_error = self._last_pass_at, self._last_error
        thread = self._thread
        return {
            "passes": self.passes,
            "last_pass_age_s": None if last_pass is None else round(now - last_pass, 3),
            "last_error": None if last_error is None else last_error[1],
            "last_error_age_s": None if last_error is None else round(now - last_error[0], 3),
            "consecutive_errors": self.consecutive_errors,
            "job_errors": self.job_errors,
            "reconciled": self.reconciled,
            "running": thread is not None and thread.is_alive(),
        }

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
                self._pass_failed("start-up reconciliation", e)
            self._stop.wait(self.policy.reconcile_backoff.delay(retry, self._rng.random()))
            retry += 1

    def _session(self) -> contextlib.AbstractContextManager[Session]:
        return session_scope(self.session_factory)

    # ------------------------------------------------------------------------------ bookkeeping

    def _warn(self, key: str, level: int, message: str, *, exc: BaseException | None = None,
              **extra: Any) -> None:
        """Log ``message`` at most every ``warn_every_s`` per ``key`` (with how many were skipped)."""
        now = self.clock()
        last, skipped = self._warned.get(key, (-math.inf, 0))
        if now - last < self.policy.warn_every_s:
            self._warned[key] = (last, skipped + 1)
            return
        self._warned[key] = (now, 0)
        error = None if exc is None else f"{type(exc).__name__}: {exc}"[:1000]
        log.log(level, message, exc_info=exc if level >= logging.ERROR else None,
                extra=extra | {"error": error, "suppressed": skipped})

    def _record_error(self, text: str) -> None:
        self._last_error = (self.clock(), text[:1000])

    def _pass_done(self) -> None:
        if self.consecutive_errors:
            # At the level of the failure it ends, so whoever saw one sees the other.
            log.warning("dispatcher recovered", extra={"failed_passes": self.consecutive_errors})
            self._warned.pop("pass", None)
        self.consecutive_errors = 0
        self.passes += 1
        self._last_pass_at = self.clock()

    def _pass_failed(self, what: str, exc: BaseException) -> None:
        self.consecutive_errors += 1
        self._record_error(f"{what}: {type(exc).__name__}: {exc}")
        level = logging.WARNING if aborts_pass(exc) else logging.ERROR
        self._warn("pass", level, f"dispatcher {what} failed; retrying", exc=exc,
                   consecutive=self.consecutive_errors)

    def _ray_down(self, exc: RayUnavailable) -> None:
        self._ray_ok = False
        self._record_error(f"Ray unavailable: {exc}")
        self._warn("ray", logging.WARNING, "Ray unavailable; will retry", exc=exc)

    def _guard(self, job_id: int, what: str, action: Callable[[], Any]) -> None:
        """Run ``action`` (one job's processing); its errors are the job's, not the pass's.

        A lost race is re-decided next pass; Ray or the database unreachable aborts the pass
        (re-raised); anything else is counted against the job, which is backed off and, after
        ``max_job_errors`` in a row, failed with the error."""
        if self._job_retry_at.get(job_id, -math.inf) > self.clock():
            return
        try:
            action()
        except (IllegalTransition, store.JobNotFound) as e:
            log.info("job changed under the dispatcher; re-deciding next pass",
                     extra={"job_id": job_id, "error": str(e)})
        except Exception as e:
            if aborts_pass(e):
                raise
            self._job_failed(job_id, what, e)
        else:
            self._job_errors.pop(job_id, None)
            self._job_retry_at.pop(job_id, None)

    def _job_failed(self, job_id: int, what: str, exc: Exception) -> None:
        n = self._job_errors[job_id] = self._job_errors.get(job_id, 0) + 1
        self.job_errors += 1
        self._record_error(f"job {job_id}: {what}: {type(exc).__name__}: {exc}")
        self._job_retry_at[job_id] = self.clock() + self.policy.job_backoff.delay(n - 1, self._rng.random())
        self._warn(f"job-{job_id}", logging.ERROR, "could not process a job", exc=exc, job_id=job_id,
                   what=what, consecutive=n)
        if n >= self.policy.max_job_errors:
            self._give_up(job_id, what, exc, n)

    def _give_up(self, job_id: int, what: str, exc: Exception, n: int) -> None:
        """Fail a job the dispatcher keeps failing to process, rather than loop on it forever."""
        self._job_errors.pop(job_id, None)
        self._job_retry_at.pop(job_id, None)
        self._tracked.discard(job_id)
        error = f"the dispatcher could not {what} this job ({n} errors in a row): {type(exc).__name__}: {exc}"
        try:
            with self._session() as s:
                job = store.get_job(s, job_id)
            if job.status not in ACTIVE_VALUES:
                log.error("gave up on a job", extra={"job_id": job_id, "status": job.status, "error": error})
                return
            if job.ray_job_id is not None:
                with contextlib.suppress(RayUnavailable, RayRequestError):
                    self.backend.stop(job.ray_job_id)
            self._transition(job_id, S.FAILED, error=error[:4000], reason="the dispatcher gave up on it")
        except Exception:
            log.exception("could not fail a job the dispatcher gave up on", extra={"job_id": job_id})

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
                self._ray_down(e)
        except Exception as e:  # the loop must survive anything one pass throws
            self._pass_failed("pass", e)
            return False
        self._pass_done()
        return True

    def reconcile(self) -> None:
        """Start-up: adopt every active job, finish what ended meanwhile, retry what is due.
        Raises when the database or Ray cannot be reached (the loop retries it)."""
        with self._session() as s:
            failed = [j.id for j in store.jobs_in_status(s, [S.FAILED.value]) if self._retry_due(j)]
        for job_id in failed:
            self._guard(job_id, "retry", lambda job_id=job_id: self._retry(job_id))
        self._watch_all(adopt=True)
        self.reconciled = True
        self._pass_done()
        log.info("reconciled", extra={"tracked": sorted(self._tracked), "retried": failed})

    def _watch_all(self, *, adopt: bool) -> None:
        with self._session() as s:
            active = store.jobs_in_status(s, list(ACTIVE_VALUES))
        seen = {j.id for j in active}
        # Hurry only for submitted jobs waiting for Ray's RUNNING (not for fences or lost submits).
        self._hurry = any(j.status == S.DISPATCHING and j.ray_job_id is not None for j in active)
        for job in active:
            self._tracked.add(job.id)
            self._guard(job.id, "watch", lambda job=job: self._watch(job, adopt=adopt))
        for job_id in sorted(self._tracked - seen):
            self._guard(job_id, "retry", lambda job_id=job_id: self._left_active(job_id))

    def _left_active(self, job_id: int) -> None:
        """The job left the active set since the last pass (the driver reported, a user cancelled
        a queued job, ...): give a failure its automatic retry."""
        self._watches.pop(job_id, None)
        try:
            with self._session() as s:
                job = store.get_job(s, job_id)
        except store.JobNotFound:
            self._tracked.discard(job_id)
            return
        if self._retry_due(job):
            self._retry(job_id)
        self._tracked.discard(job_id)

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
        """An active job without a recorded Ray job: claimed but not (yet) submitted, submitted
        but the answer lost, or cancelled in between."""
        ours = job.claimed_by == self.claimer  # no submit of ours is in flight: one thread does both
        if not (adopt or ours) and self._age(job.dispatching_at) < self.policy.submit_grace_s:
            return  # another replica's submission may be in flight
        if job.status == S.DISPATCHING and ours and not adopt:
            self._submit(job)  # waiting for the previous attempt to stop, or our submit failed
            return
        if self._find_lost_submission(job):
            return
        if job.status == S.CANCELLING:
            self._fences.pop(job.id, None)
            self._transition(job.id, S.CANCELLED, reason="cancelled before it reached Ray")
        elif job.status == S.DISPATCHING:
            self._requeue(job, "submission did not reach Ray; queued again")
        else:  # running, yet Ray knows no submission of this attempt: it vanished
            self._finish(job, None)

    def _find_lost_submission(self, job: Job) -> bool:
        """Adopt the Ray job of a submit whose answer we never recorded; True when found."""
        sub_id = submission_id(job)
        if self.backend.status(sub_id) is None:
            return False
        log.info("adopting a Ray job whose submission was not recorded",
                 extra={"job_id": job.id, "ray_job_id": sub_id})
        self._record_ray_id(job, sub_id)
        return True

    def _age(self, when: datetime | None) -> float:
        return float("inf") if when is None else (utcnow() - when).total_seconds()

    # ------------------------------------------------------------------------------ endings

    def _finish(self, job: Job, info: RayJobInfo | None) -> None:
        """The Ray job ended (``info``) or vanished (None): record the outcome once."""
        self._ingest_spools(job.id)
        with self._session() as s:
            job = store.get_job(s, job.id)
        if job.status not in ACTIVE_VALUES:
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
        self._transition(job.id, S.FAILED, error=error, reason=f"Ray job {ray_status or 'vanished'}")
        with self._session() as s:
            job = store.get_job(s, job.id)
        if self._retry_due(job):
            self._retry(job.id)

    def _request_stop(self, job: Job) -> None:
        w = self._watches.setdefault(job.id, _Watch())
        now = self.clock()
        if w.waited(now) > self.policy.cancel_timeout_s:
            reason = f"Ray did not confirm the stop within {self.policy.cancel_timeout_s:.0f} s"
            self._transition(job.id, S.CANCELLED, reason=reason)
            return
        if w.stop_due(now, self.policy.restop_every_s):
            assert job.ray_job_id is not None
            self.backend.stop(job.ray_job_id)
            w.stopped(now)
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
        if not self._ray_ok:
            # Ray failed to answer recently: claim nothing until it answers again, rather than
            # bounce jobs between dispatching and queued every pass.
            self._ray_ok = self.backend.ping()
            if not self._ray_ok:
                return
        with self._session() as s:
            free = self.settings.max_concurrent_jobs - store.count_active_jobs(s)
            if free <= 0:
                return
            jobs = transitions.claim_queued_jobs(s, limit=free, claimer=self.claimer)
        for job in jobs:
            self._tracked.add(job.id)
            self._guard(job.id, "submit", lambda job=job: self._submit(job))
        self._hurry = self._hurry or bool(jobs)

    def _submit(self, job: Job) -> None:
        """Submit ``job``'s current attempt (claimed by us, dispatching), fenced against its
        previous attempt; it stays dispatching while that attempt's Ray job is being stopped."""
        layout = self.settings.layout
        # First the marker, so a trainer of an older attempt stops writing while we wait for it.
        attempts.write_attempt_marker(layout.attempt_marker(job.id), job.attempt)
        try:
            if not self._previous_attempt_stopped(job):
                return
        except RayUnavailable as e:
            self._ray_down(e)
            self._requeue(job, f"Ray unavailable at submission: {str(e)[:300]}")
            return
        sub_id = submission_id(job)
        token_file = self._issue_token(job, sub_id)
        if token_file is None:
            return  # the job went on to another attempt meanwhile
        cpus, gpus = entrypoint_resources(job.kind, job.spec)
        try:
            ray_id = self.backend.submit(
                driver_entrypoint(self.settings.driver_python, job.id), sub_id,
                env_vars=driver_env(self.settings, job, token_file), num_cpus=cpus, num_gpus=gpus or None,
                metadata={"ramp_job_id": str(job.id), "ramp_attempt": str(job.attempt)},
            )
        except RayJobExists:
            ray_id = sub_id  # an earlier submit of this very attempt got through
        except RayUnavailable as e:
            self._ray_down(e)
            self._after_unknown_submit(job, sub_id, e)
            return
        except RayRequestError as e:
            self._transition(job.id, S.FAILED, error=f"Ray refused the job: {e}", reason="submission refused")
            return
        self._ray_ok = True
        if self._record_ray_id(job, ray_id):
            log.info("job submitted to Ray",
                     extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": ray_id})

    def _issue_token(self, job: Job, sub_id: str) -> Path | None:
        """The attempt's token file (reused by a resubmission of the attempt) with its hash on the
        job row; None when the job has moved on to another attempt."""
        path = self.settings.layout.driver_token_file(job.id, sub_id)
        token = attempts.issue_token_file(path, lambda: generate_token(DRIVER_TOKEN_PREFIX))
        with self._session() as s:
            if not transitions.set_driver_token(s, job.id, attempt=job.attempt, token_hash=hash_token(token)):
                return None
        attempts.remove_token_files(path.parent, keep=path)  # earlier attempts' tokens are dead
        return path

    def _previous_attempt_stopped(self, job: Job) -> bool:
        """True once attempt n-1's Ray job (if any) is terminal, or after ``fence_timeout_s`` of
        asking Ray to stop it: two attempts must not train into one checkpoint directory."""
        if job.attempt <= 1:
            return True
        previous = submission_id(job, job.attempt - 1)
        info = self.backend.info(previous)
        if info is None or info.status in RAY_TERMINAL:
            self._fences.pop(job.id, None)
            return True
        w = self._fences.setdefault(job.id, _Watch())
        now = self.clock()
        if w.waited(now) > self.policy.fence_timeout_s:
            log.warning("submitting the next attempt although the previous one's Ray job did not stop",
                        extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": previous,
                               "waited_s": round(w.waited(now), 1)})
            self._fences.pop(job.id, None)
            return True
        if w.stop_due(now, self.policy.restop_every_s):
            log.info("stopping the previous attempt's Ray job before the next attempt",
                     extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": previous})
            self.backend.stop(previous)
            w.stopped(now)
            info = self.backend.info(previous)  # a stop often takes effect at once
            if info is None or info.status in RAY_TERMINAL:
                self._fences.pop(job.id, None)
                return True
        return False

    def _requeue(self, job: Job, reason: str) -> None:
        """Back to the queue within the same attempt (its driver token kept)."""
        self._fences.pop(job.id, None)
        self._transition(job.id, S.QUEUED, reason=reason)

    def _after_unknown_submit(self, job: Job, sub_id: str, exc: RayUnavailable) -> None:
        """Ray did not answer a submit: it may have got through all the same."""
        with self._session() as s:
            current = store.get_job(s, job.id)
        if current.attempt != job.attempt:
            self._orphans[job.id] = _Orphan(job.attempt, sub_id)
        elif current.status == S.DISPATCHING:
            # Requeued in the same attempt, token kept: the next claim submits the same id and
            # adopts this Ray job if it exists; if the job ends first, it is stopped.
            self._orphans[job.id] = _Orphan(job.attempt, sub_id)
            self._requeue(job, f"Ray unavailable at submission: {str(exc)[:300]}")
        elif current.status in ACTIVE_VALUES:
            self._record_ray_id(job, sub_id)  # its driver already reported: it got through
        else:
            self._orphans[job.id] = _Orphan(job.attempt, sub_id)

    def _record_ray_id(self, job: Job, ray_id: str) -> bool:
        """Record the Ray job of ``job``'s attempt; when the job moved on meanwhile, make sure
        that Ray job does not run unwatched. True when recorded."""
        with self._session() as s:
            if transitions.record_submission(s, job.id, attempt=job.attempt, ray_job_id=ray_id) is not None:
                self._orphans.pop(job.id, None)
                return True
        log.info("the job moved on while its attempt was submitted",
                 extra={"job_id": job.id, "attempt": job.attempt, "ray_job_id": ray_id})
        self._orphans[job.id] = _Orphan(job.attempt, ray_id)
        self._resolve_orphan(job.id)
        return False

    def _resolve_orphans(self) -> None:
        for job_id in sorted(self._orphans):
            self._guard(job_id, "stop an unwatched Ray job",
                        lambda job_id=job_id: self._resolve_orphan(job_id))

    def _resolve_orphan(self, job_id: int) -> None:
        """Stop (and see stopped) a Ray job no active job row records, unless its job is queued in
        that attempt (the next claim adopts it) or active in it again."""
        orphan = self._orphans.get(job_id)
        if orphan is None:
            return
        try:
            with self._session() as s:
                job: Job | None = store.get_job(s, job_id)
        except store.JobNotFound:
            job = None
        if job is not None and job.attempt == orphan.attempt:
            if job.status in ACTIVE_VALUES:
                self._orphans.pop(job_id, None)  # submitted again: the watch has it
                return
            if job.status == S.QUEUED:
                return
        info = self.backend.info(orphan.ray_job_id)
        now = self.clock()
        if info is None or info.status in RAY_TERMINAL:
            self._orphans.pop(job_id, None)
            return
        if orphan.watch.waited(now) > self.policy.cancel_timeout_s:
            log.error("Ray did not stop an unwatched Ray job", extra={"job_id": job_id,
                                                                      "ray_job_id": orphan.ray_job_id})
            self._orphans.pop(job_id, None)
            return
        if orphan.watch.stop_due(now, self.policy.restop_every_s):
            log.warning("stopping a Ray job whose job has moved on",
                        extra={"job_id": job_id, "attempt": orphan.attempt, "ray_job_id": orphan.ray_job_id,
                               "status": None if job is None else job.status})
            self.backend.stop(orphan.ray_job_id)
            orphan.watch.stopped(now)

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
