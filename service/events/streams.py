"""Bounds on the event streams (``GET /v1/jobs/{id}/events?follow=true``).

An open stream outlives the request that authenticated it, so two things are bounded here:

- **How many.** A stream holds a connection and a poll loop for as long as its job runs (100
  idle streams cost about a quarter of a core). ``StreamGate`` admits at most
  ``RAMP_MAX_STREAMS_PER_TOKEN`` open streams per API token (beyond: 429) and
  ``RAMP_MAX_STREAMS`` per process (beyond: 503), both with ``Retry-After``. The slot is held
  from the moment the stream is admitted until its response has finished, however it finishes
  (``LeasedEventSource``).
- **For how long a token's word holds.** ``TokenRecheck`` re-verifies the stream's token (revoked?
  expired?) at most every ``RAMP_STREAM_AUTH_RECHECK_S`` seconds, between polls. A revoked or
  expired token's open streams therefore end within ``RAMP_STREAM_AUTH_RECHECK_S +
  RAMP_SSE_POLL_INTERVAL_S`` seconds (5.5 s with the defaults), plus one database round trip,
  with a last ``unauthorized`` event saying why.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send


class StreamRefused(Exception):
    """No slot: ``status`` 429 (this token's streams) or 503 (the process's)."""

    def __init__(self, status: int, detail: str, retry_after_s: int) -> None:
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s
        super().__init__(detail)


class Lease:
    """One admitted stream's slot; ``release`` is idempotent."""

    def __init__(self, gate: StreamGate, key: Any) -> None:
        self._gate, self._key, self._held = gate, key, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate._release(self._key)


class StreamGate:
    """Counts open streams per token and in all; thread-safe."""

    def __init__(self, per_token: int, total: int, *, retry_after_s: int = 5) -> None:
        self.per_token = per_token
        self.total = total
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._open: Counter[Any] = Counter()

    def admit(self, key: Any) -> Lease:
        with self._lock:
            if self._open[key] >= self.per_token:
                raise StreamRefused(429, f"too many open event streams for this token (at most "
                                    f"{self.per_token}); close one or retry later", self.retry_after_s)
            if sum(self._open.values()) >= self.total:
                raise StreamRefused(503, f"the service has its maximum of {self.total} open event streams; "
                                    "retry later", self.retry_after_s)
            self._open[key] += 1
        return Lease(self, key)

    def open_streams(self, key: Any = None) -> int:
        with self._lock:
            return sum(self._open.values()) if key is None else self._open[key]

    def _release(self, key: Any) -> None:
        with self._lock:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]


_create_lock = threading.Lock()


def gate_for(state: Any, settings: Any) -> StreamGate:
    """The app's gate (``state.stream_gate``), made on first use from the settings."""
    gate = getattr(state, "stream_gate", None)
    if gate is None:
        with _create_lock:
            gate = getattr(state, "stream_gate", None)
            if gate is None:
                gate = StreamGate(settings.max_streams_per_token, settings.max_streams,
                                  retry_after_s=settings.retry_after_s)
                state.stream_gate = gate
    return gate


class LeasedEventSource(EventSourceResponse):
    """An event stream that gives its slot back once its response has finished -- at the end of the
    job, on a client's disconnect, on an error or a cancellation alike."""

    def __init__(self, lease: Lease, *args: Any, **kwargs: Any) -> None:
        self.lease = lease
        super().__init__(*args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.lease.release()


class TokenRecheck:
    """When ``due()``, ``verify()`` re-checks the token (raising when it is no longer valid): at
    least ``every_s`` seconds after the last check. ``clock`` is injectable for tests."""

    def __init__(self, verify: Callable[[], None], every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._verify, self.every_s, self._clock = verify, every_s, clock
        self._last = clock()

    def due(self) -> bool:
        return self._clock() - self._last >= self.every_s

    def verify(self) -> None:
        self._verify()
        self._last = self._clock()
