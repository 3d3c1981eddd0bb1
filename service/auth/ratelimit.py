"""Per-token request rate limit for the public API: an in-process token bucket per API token.

Each token may burst up to ``per_minute`` requests and refills at ``per_minute / 60`` a second.
The buckets live in this process's memory: with N replicas behind a load balancer a token gets up
to N times the limit (a shared limit would need a shared store such as Redis or the database).
Job drivers' ``/internal`` endpoints and the health endpoints are not limited by it: only the
``/v1`` authentication dependency calls ``RateLimiter.acquire``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any


class RateLimiter:
    """Token buckets keyed by API token id. ``clock`` (monotonic seconds) is injectable so tests
    are deterministic; thread-safe (sync FastAPI dependencies run in a thread pool)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive (0 disables limiting: use no limiter)")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens left, clock at the last update). One entry per API token that called.
        self._buckets: dict[int, tuple[float, float]] = {}

    def acquire(self, key: int) -> int | None:
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


_create_lock = threading.Lock()


def limiter_for(state: Any, per_minute: int) -> RateLimiter | None:
    """The app's limiter (``app.state.rate_limiter``), created on first use from the settings;
    None when ``per_minute`` is 0 (disabled). Tests may set ``app.state.rate_limiter`` first."""
    limiter = getattr(state, "rate_limiter", None)
    if limiter is not None or per_minute <= 0:
        return limiter
    with _create_lock:
        limiter = getattr(state, "rate_limiter", None)
        if limiter is None:
            limiter = RateLimiter(per_minute)
            state.rate_limiter = limiter
        return limiter
