"""How the dispatcher's loop fares: completed and failed passes, the latest error (of a pass, of Ray
or of one job), and warnings logged at most every ``warn_every_s`` per kind.

``/readyz`` reads ``snapshot()`` from another thread: the figures are plain attributes, replaced
atomically.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from service.dispatcher.policy import DispatchPolicy, aborts_pass

log = logging.getLogger(__name__)


class LoopHealth:
    def __init__(self, policy: DispatchPolicy, clock: Callable[[], float]) -> None:
        self.policy, self.clock = policy, clock
        self.passes = 0
        self.job_errors = 0
        self.reconciled = False
        self.consecutive_errors = 0
        self._last_pass_at: float | None = None
        # When the loop was made: /readyz says how long the start-up reconciliation has taken.
        self._started_at = clock()
        self._last_error: tuple[float, str] | None = None
        # Rate-limited warnings: key -> (last logged, suppressed since).
        self._warned: dict[str, tuple[float, int]] = {}

    def warn(self, key: str, level: int, message: str, *, exc: BaseException | None = None,
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

    def record_error(self, text: str) -> None:
        self._last_error = (self.clock(), text[:1000])

    def pass_done(self) -> None:
        if self.consecutive_errors:
            # At the level of the failure it ends, so whoever saw one sees the other.
            log.warning("dispatcher recovered", extra={"failed_passes": self.consecutive_errors})
            self._warned.pop("pass", None)
        self.consecutive_errors = 0
        self.passes += 1
        self._last_pass_at = self.clock()

    def pass_failed(self, what: str, exc: BaseException) -> None:
        self.consecutive_errors += 1
        self.record_error(f"{what}: {type(exc).__name__}: {exc}")
        level = logging.WARNING if aborts_pass(exc) else logging.ERROR
        self.warn("pass", level, f"dispatcher {what} failed; retrying", exc=exc,
                  consecutive=self.consecutive_errors)

    def job_failed(self, job_id: int, what: str, exc: Exception, consecutive: int) -> None:
        self.job_errors += 1
        self.record_error(f"job {job_id}: {what}: {type(exc).__name__}: {exc}")
        self.warn(f"job-{job_id}", logging.ERROR, "could not process a job", exc=exc, job_id=job_id,
                  what=what, consecutive=consecutive)

    def snapshot(self, *, running: bool) -> dict[str, Any]:
        """The loop's heartbeat, for readiness probes.

        ``passes``: completed passes (the start-up reconciliation included); ``last_pass_age_s``:
        seconds since the last one completed (None before the first); ``last_error`` and
        ``last_error_age_s``: the latest error of a pass, of Ray or of one job (kept after
        recovery); ``consecutive_errors``: failed passes since the last completed one (0 when
        healthy); ``job_errors``: errors processing single jobs so far; ``reconciled``: the start-up
        reconciliation has completed; ``started_age_s``: seconds since the loop was made;
        ``running``: the loop's thread is alive."""
        now = self.clock()
        last_pass, last_error = self._last_pass_at, self._last_error
        return {
            "passes": self.passes,
            "last_pass_age_s": None if last_pass is None else round(now - last_pass, 3),
            "last_error": None if last_error is None else last_error[1],
            "last_error_age_s": None if last_error is None else round(now - last_error[0], 3),
            "consecutive_errors": self.consecutive_errors,
            "job_errors": self.job_errors,
            "reconciled": self.reconciled,
            "started_age_s": round(now - self._started_at, 3),
            "running": running,
        }
