"""The one retry policy: exponential backoff with bounded jitter, run by ``tenacity``.

Used wherever something waits on another process that may be restarting: a job driver's reports
to the service (``workers.jobs.reporter``), the service waiting for its embedded Ray head
(``service.ray_local``), the CLI re-following a job's event stream. Each use configures the
numbers; the rule is the same.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

Deadline = Callable[[], float | None]
"""Returns the monotonic time after which no retry may start (None: no deadline)."""


@dataclass(frozen=True)
class RetryPolicy:
    """base * factor**retry, capped at ``max_s``, scaled by a factor in [1 - jitter, 1 + jitter]."""

    base_s: float = 0.25
    factor: float = 2.0
    max_s: float = 10.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.factor >= 1 and self.max_s >= self.base_s and 0 <= self.jitter < 1):
            raise ValueError(f"invalid backoff {self}")

    def delay(self, retry: int, rand: float) -> float:
        """The wait before retry number ``retry`` (0-based); ``rand`` uniform in [0, 1)."""
        if self.factor == 1:
            raw = self.base_s
        elif retry * math.log(self.factor) >= math.log(self.max_s / self.base_s):
            raw = self.max_s  # compared in log space: factor**retry overflows long after the cap
        else:
            raw = self.base_s * self.factor**retry
        return min(self.max_s, raw * (1 - self.jitter + 2 * self.jitter * rand))

    def retrying(
        self,
        *,
        retry_on: Callable[[BaseException], bool],
        deadline: Deadline = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
    ) -> tenacity.Retrying:
        """A ``tenacity.Retrying`` that retries the exceptions ``retry_on`` accepts, waiting
        ``delay(...)`` between attempts, and gives up (re-raising the last exception) when the
        next wait would end after ``deadline()``."""
        draw = (rng or random.Random()).random

        def wait(state: tenacity.RetryCallState) -> float:
            return self.delay(state.attempt_number - 1, draw())

        def stop(state: tenacity.RetryCallState) -> bool:
            limit = deadline()
            return limit is not None and clock() + (state.upcoming_sleep or 0.0) > limit

        return tenacity.Retrying(retry=tenacity.retry_if_exception(retry_on), wait=wait, stop=stop,
                                 sleep=sleep, reraise=True)
