"""Request budgets: in-process token buckets, one per caller and budget.

Three budgets (``BUDGETS``), each a bucket that bursts up to ``per_minute`` requests and refills at
``per_minute / 60`` a second:

- ``requests`` -- per API token, ``RAMP_RATE_LIMIT_PER_MINUTE`` (600): everything a token does
  on ``/v1`` *and* on the web pages (page loads, downloads, submit / cancel / retry / logout),
  whether it comes as a bearer header or through a login session. One budget, so the pages are no
  way around the API's limit.
- ``polls`` -- per API token, ``RAMP_POLL_RATE_LIMIT_PER_MINUTE`` (1200): the endpoints the pages'
  own script polls while they are visible (``/ui/api/jobs/{id}``, ``/ui/fragments/...``,
  ``/ui/jobs/{id}/log``). A job page polls every 2 s (30 a minute, 60 for a sweep with its trial
  table), the jobs list every 3 s (20 a minute): 1200 covers 20 visible sweep pages or 40 job
  pages of one token at once, so the dashboard never eats into the API budget, and a flood of
  these cheap reads is still bounded.
- ``login`` -- per client address (behind a trusted proxy, the forwarded client:
  ``service.core.proxy``), ``RAMP_LOGIN_RATE_LIMIT_PER_MINUTE`` (30): every ``POST /ui/login``,
  accepted or not, before any token is known.

The buckets live in this process's memory: with N replicas behind a load balancer a caller gets up
to N times each budget (a shared limit would need a shared store such as Redis or the database).
Job drivers' ``/internal`` endpoints, the health endpoints, static files and requests refused
before authentication are not counted.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


class RateLimiter:
    """Token buckets keyed by caller (a token id, a client address). ``clock`` (monotonic seconds)
    is injectable so tests are deterministic; thread-safe (sync FastAPI dependencies run in a
    thread pool)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive (0 disables limiting: use no limiter)")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens left, clock at the last update). One entry per caller that called.
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def acquire(self, key: Hashable) -> int | None:
        """Take one request from ``key``'s bucket: None when allowed, else the whole seconds to
        wait before one is (for ``Retry-After``; at least 1)."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))


@dataclass(frozen=True)
class Budget:
    """One budget: where its limiter lives on ``app.state``, the setting sizing it, what it counts."""

    attr: str
    setting: str
    unit: str


BUDGETS: dict[str, Budget] = {
    "requests": Budget("rate_limiter", "rate_limit_per_minute", "requests per minute per token"),
    "polls": Budget("poll_rate_limiter", "poll_rate_limit_per_minute",
                    "page refreshes per minute per token"),
    "login": Budget("login_rate_limiter", "login_rate_limit_per_minute",
                    "login attempts per minute per address"),
}

_create_lock = threading.Lock()


def limiter_for(state: Any, per_minute: int, attr: str = "rate_limiter") -> RateLimiter | None:
    """The app's limiter stored as ``state.<attr>``, created on first use from the settings; None
    when ``per_minute`` is 0 (disabled). Tests may set the attribute first (a fake clock)."""
    limiter = getattr(state, attr, None)
    if limiter is not None or per_minute <= 0:
        return limiter
    with _create_lock:
        limiter = getattr(state, attr, None)
        if limiter is None:
            limiter = RateLimiter(per_minute)
            setattr(state, attr, limiter)
        return limiter


@dataclass(frozen=True)
class Refusal:
    """Over budget: wait ``retry_after_s``; ``detail`` says which budget."""

    retry_after_s: int
    detail: str


def spend(state: Any, settings: Any, budget: str, key: Hashable) -> Refusal | None:
    """Take one request of ``budget`` for ``key``; a ``Refusal`` when it is spent."""
    spec = BUDGETS[budget]
    limiter = limiter_for(state, int(getattr(settings, spec.setting)), spec.attr)
    if limiter is None:
        return None
    wait = limiter.acquire(key)
    if wait is None:
        return None
    return Refusal(wait, f"rate limit exceeded ({int(limiter.capacity)} {spec.unit}); retry in {wait} s")
