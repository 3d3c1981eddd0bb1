"""How a job driver reports to the service: HTTP with retries, and a spool so nothing is lost.

``ServiceClient`` makes one request to the service's internal endpoints, retrying transport errors,
5xx, 408 and 429 under the project's retry policy (``workers.contract.retry``, through tenacity)
until a deadline; any other 4xx is final
(``Rejected``). Every request names the driver's attempt (``X-Ramp-Attempt``), so the service can
refuse a driver whose attempt was superseded. ``Reporter`` numbers every event (``seq``, per
attempt), appends it to the on-disk spool first, and sends spooled events in order from a
background thread, so the training loop never waits on the network. If the service is down longer
than the driver lives, the events stay in the spool and the service ingests them later
(``workers.contract.outbox``). A batch the service refuses as a whole (one oversized or malformed
event: 413 / 400 / 422) is bisected until the offending events are isolated; only those are
dropped, each with a warning, and their neighbours are delivered.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from workers.contract.attempts import ATTEMPT_HEADER
from workers.contract.events import Event
from workers.contract.outbox import Spool
from workers.contract.retry import Deadline, RetryPolicy

ENV_SERVICE_URL = "RAMP_SERVICE_URL"
ENV_JOB_TOKEN = "RAMP_JOB_TOKEN"  # the token itself: for runs outside Ray (tests, by hand)
ENV_JOB_TOKEN_FILE = "RAMP_JOB_TOKEN_FILE"  # what the dispatcher passes: the attempt's 0600 token file
ENV_JOB_ATTEMPT = "RAMP_JOB_ATTEMPT"
ENV_STORAGE_DIR = "RAMP_STORAGE_DIR"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# The service no longer takes anything from this driver: its token is gone (401/403), the job is
# gone (404), or its attempt was superseded (409 on events). Resending cannot help.
FATAL_STATUS = frozenset({401, 403, 404, 409})
MAX_BATCH = 1000  # the service's limit per POST

log = logging.getLogger(__name__)


Backoff = RetryPolicy  # the drivers' name for the project's retry policy


class ReportError(RuntimeError):
    """A report could not be delivered before its deadline."""


class Rejected(ReportError):
    """The service refused a report (a 4xx other than 408/429): retrying cannot help.

    ``payload``: the response's JSON object, if any (a 409 from the internal endpoints carries the
    job's ``status`` and a ``refusal``: ``stale_attempt``, ``job_ended`` or ``illegal_transition``)."""

    def __init__(self, message: str, status_code: int, payload: dict[str, Any] | None = None) -> None:
        self.status_code = status_code
        self.payload = payload or {}
        super().__init__(message)

    @property
    def refusal(self) -> str | None:
        value = self.payload.get("refusal")
        return value if isinstance(value, str) else None


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class _Transient(Exception):
    """A failed attempt worth retrying (transport error, 5xx, 408, 429)."""


def jsonable(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (a diverged loss is a fact, not a transport error)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


class ServiceClient:
    """The per-job token's view of the service: /internal/jobs/{id}/..."""

    def __init__(
        self,
        base_url: str,
        job_id: int,
        token: str,
        *,
        attempt: int | None = None,
        backoff: Backoff | None = None,
        timeout_s: float = 10.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.job_id = job_id
        self.attempt = attempt
        self.backoff = backoff or Backoff()
        self._http = http or httpx.Client(timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"}
        if attempt is not None:
            self._headers[ATTEMPT_HEADER] = str(int(attempt))
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        deadline: float | Deadline | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> httpx.Response:
        """One request, retried until it gets a definite answer or ``deadline`` (monotonic) passes.

        ``deadline`` may be a callable so that a caller can shorten it while a retry loop waits.
        """
        deadline_fn: Deadline = deadline if callable(deadline) else (lambda: deadline)  # type: ignore[assignment,return-value]
        url = f"{self.base_url}/internal/jobs/{self.job_id}{path}"

        def attempt() -> httpx.Response:
            try:
                r = self._http.request(method, url, json=json, headers=self._headers)
            except httpx.TransportError as e:
                raise _Transient(f"{type(e).__name__}: {e}") from e
            if r.status_code < 400:
                return r
            if r.status_code not in RETRYABLE_STATUS:
                raise Rejected(f"{method} {url} -> {r.status_code}: {r.text[:500]}", r.status_code,
                               _json_object(r))
            raise _Transient(f"HTTP {r.status_code}")

        def pause(seconds: float) -> None:
            log.debug("report failed, retrying", extra={"url": url, "wait": seconds})
            (sleep or self._sleep)(seconds)

        retrying = self.backoff.retrying(retry_on=lambda e: isinstance(e, _Transient), deadline=deadline_fn,
                                         clock=self._clock, sleep=pause, rng=self._rng)
        try:
            return retrying(attempt)
        except _Transient as e:
            raise ReportError(f"{method} {url} not delivered before its deadline (last: {e})") from None

    def _deadline_in(self, seconds: float | None) -> float | None:
        return None if seconds is None else self._clock() + seconds

    def get_spec(self, *, timeout_s: float | None = 120.0) -> dict[str, Any]:
        return self.request("GET", "/spec", deadline=self._deadline_in(timeout_s)).json()

    def post_events(
        self,
        events: list[dict[str, Any]],
        *,
        deadline: float | Deadline | None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.request("POST", "/events", json={"events": events}, deadline=deadline, sleep=sleep)

    def post_status(
        self,
        status: str,
        *,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        timeout_s: float | None = 60.0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if metrics is not None:
            body["metrics"] = jsonable(metrics)
        if error is not None:
            body["error"] = error[-60_000:]
        return self.request("POST", "/status", json=body, deadline=self._deadline_in(timeout_s)).json()


class Reporter:
    """Numbered, spooled, asynchronously delivered events of one attempt.

    ``emit`` never blocks on the network. ``close(timeout_s)`` delivers what is left within the
    time given and returns False when something stays in the spool (the service ingests it later).
    """

    def __init__(
        self,
        client: ServiceClient,
        *,
        attempt: int,
        spool_dir: str | Path,
        batch_size: int = 200,
        flush_interval_s: float = 0.5,
        progress_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.attempt = attempt
        self.spool = Spool(spool_dir, attempt)
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.flush_interval_s = flush_interval_s
        self.progress_interval_s = progress_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # A restarted driver of the same attempt continues the numbering (and re-sends the rest).
        self._pending: list[dict[str, Any]] = self.spool.pending()
        self._next_seq = self.spool.last_seq() + 1
        self._deadline: float | None = None
        self._closing = False
        self._dead: str | None = None  # why delivery stopped for good (token revoked, ...)
        self._last_progress = -math.inf
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.dropped = 0

    # ------------------------------------------------------------------------------ emitting

    def emit(self, type_: str, data: dict[str, Any]) -> int:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            event = Event(seq=seq, type=type_, data=jsonable(data | {"ts": round(time.time(), 3)}),
                          attempt=self.attempt).model_dump()
            self.spool.append(event)
            self._pending.append(event)
        self._wake.set()
        return seq

    def progress(self, step: int, total_steps: int, *, force: bool = False, **extra: Any) -> int | None:
        """A progress event, at most one per ``progress_interval_s`` unless forced or final."""
        now = self._clock()
        if not force and step < total_steps and now - self._last_progress < self.progress_interval_s:
            return None
        self._last_progress = now
        fraction = step / total_steps if total_steps else 0.0
        return self.emit("progress", {"step": step, "total_steps": total_steps, "fraction": fraction} | extra)

    def metrics(self, data: dict[str, Any]) -> int:
        return self.emit("metrics", data)

    def log(self, message: str, *, level: str = "info", **extra: Any) -> int:
        return self.emit("log", {"message": message, "level": level} | extra)

    def artifact(self, name: str, *, size: int | None = None, **extra: Any) -> int:
        data: dict[str, Any] = {"name": name} | extra
        if size is not None:
            data["size"] = size
        return self.emit("artifact", data)

    # ----------------------------------------------------------------------------- delivery

    def start(self) -> Reporter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ramp-reporter", daemon=True)
            self._thread.start()
        return self

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def _backoff_sleep(self, seconds: float) -> None:
        # Sliced, so that close() setting a deadline cuts a long backoff short.
        end = self._clock() + seconds
        while True:
            now = self._clock()
            limit = end if self._deadline is None else min(end, self._deadline)
            if now >= limit:
                return
            time.sleep(min(0.1, limit - now))

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._pending[: self.batch_size]
                closing = self._closing
            if not batch:
                if closing:
                    return
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                continue
            try:
                done = self._deliver(batch)
            except Rejected as e:
                # This attempt's token is gone (job retried or deleted), or its attempt was
                # superseded: nobody will take these events.
                self._dead = str(e)
                print(f"ramp reporter: service refused events, giving up: {e}", file=sys.stderr)
                return
            with self._lock:
                del self._pending[:done]
            if done < len(batch):
                return  # close() deadline passed; the rest stays in the spool

    def _deliver(self, batch: list[dict[str, Any]]) -> int:
        """Send ``batch`` in order; returns how many of its leading events are done (delivered, or
        dropped because the service refuses them). A refused batch is split in halves, recursively,
        so one bad event costs only itself. Raises ``Rejected`` for a refusal of the driver itself
        (``FATAL_STATUS``); stops early (returning less than ``len(batch)``) at the close deadline."""
        done = 0
        parts = [(0, len(batch))]  # a stack of [lo, hi) ranges, the leftmost on top
        while parts:
            lo, hi = parts.pop()
            part = batch[lo:hi]
            try:
                self.client.post_events(part, deadline=lambda: self._deadline, sleep=self._backoff_sleep)
            except Rejected as e:
                if e.status_code in FATAL_STATUS:
                    raise
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    parts += [(mid, hi), (lo, mid)]
                    continue
                self._drop(part[0], e)
            except ReportError:
                return done
            else:
                self.delivered += len(part)
            # Acknowledged in order: everything up to this part's last seq is done.
            self.spool.ack(int(part[-1]["seq"]))
            done = hi
        return done

    def _drop(self, event: dict[str, Any], error: Rejected) -> None:
        """Give up on one event the service refuses; say so (it stays in the spool file)."""
        self.dropped += 1
        reason = str(error)[:300]
        print(f"ramp reporter: dropped event seq {event.get('seq')} ({event.get('type')}): {reason}",
              file=sys.stderr)
        log.warning("event dropped", extra={"seq": event.get("seq"), "type": event.get("type"),
                                            "status_code": error.status_code})
        if (event.get("data") or {}).get("dropped_seq") is None:
            # A small log event the service can take, so the job's log shows the gap (never for a
            # notice itself: a service refusing everything must not make this loop forever).
            self.log(f"an event was dropped: the service refused it ({error.status_code})",
                     level="warning", dropped_seq=event.get("seq"), dropped_type=event.get("type"),
                     status_code=error.status_code)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything emitted so far was delivered (True) or ``timeout_s`` passed."""
        end = self._clock() + timeout_s
        self._wake.set()
        while self._clock() < end:
            if self.pending_count() == 0:
                return True
            if self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.02)
        return self.pending_count() == 0

    def close(self, timeout_s: float = 10.0) -> bool:
        """Deliver what is left within ``timeout_s``; True when nothing stays behind."""
        with self._lock:
            self._closing = True
            self._deadline = self._clock() + timeout_s
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s + 1.0)
        return self.pending_count() == 0 and self._dead is None
