"""The CLI's REST client: JSON requests with a bearer token, and one way to follow a job's events.

Errors are ``ServiceError``s whose message is one line a user can act on (``HTTP 404: job 9 not
found``, ``cannot reach the service at ...``); the commands print them (``rampctl.console``) and
exit non-zero. This module prints nothing and imports neither torch nor the service.

``follow`` reads ``GET /v1/jobs/{id}/events?follow=true`` (server-sent events, parsed by
``httpx-sse``) until the service's ``end`` event. A stream that drops before it is reopened with
``Last-Event-ID`` set to the last event id seen, so the service resumes right after it: no event
is lost or repeated across a service restart. The reopening is the project's one retry policy
(``workers.contract.retry``, run by tenacity) as ``CliSettings.reconnect_policy`` configures it:
each event read is one retried call, so the ``reconnect_attempts`` budget counts failures in a row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any, NamedTuple

import httpx
import tenacity
from httpx_sse import EventSource, ServerSentEvent, SSEError, connect_sse
from pydantic import ValidationError

from rampctl.settings import CliSettings


class ServiceError(Exception):
    """A failure talking to the service, worded as one line for the user."""


class StreamEvent(NamedTuple):
    """One server-sent event: its type (``progress``, ``metrics``, ``log``, ``status``, ``trial``,
    ``end``, ...) and its JSON payload (a stored event: ``{"id", "type", "data", ...}``; ``end``:
    ``{"status": ...}``)."""

    type: str
    payload: dict[str, Any]


def load_settings() -> CliSettings:
    """The CLI settings from the environment; a bad value is a one-line ``ServiceError``."""
    try:
        return CliSettings()
    except ValidationError as e:
        problems = "; ".join(
            f"RAMP_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in e.errors()
        )
        raise ServiceError(f"invalid settings: {problems}") from e


class ServiceClient:
    """The service's REST API as the CLI uses it. Use as a context manager (closes the connections)."""

    def __init__(self, settings: CliSettings | None = None) -> None:
        self.settings = settings or load_settings()
        self.url = self.settings.base_url
        token = self.settings.bearer_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self.http = httpx.Client(base_url=self.url, headers=headers,
                                     timeout=self.settings.request_timeout_s)
        except httpx.InvalidURL as e:
            raise ServiceError(f"invalid RAMP_URL {self.url!r}: {e}") from e

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------ requests

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the decoded JSON body (or the text of a non-JSON one)."""
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ServiceError(
                f"cannot reach the service at {self.url} ({type(e).__name__}); is `rampctl serve` running?"
            ) from e
        if r.status_code >= 400:
            raise ServiceError(http_error(r))
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.post("/v1/jobs", json=spec, headers=headers)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/v1/jobs/{job_id}")

    def jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        """A page of jobs, newest first: ``{"jobs": [...], "next_cursor": ...}``."""
        return self.get("/v1/jobs", params=params)

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self.post(f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: int) -> dict[str, Any]:
        return self.post(f"/v1/jobs/{job_id}/retry")

    def compare(self, job_ids: list[int]) -> dict[str, Any]:
        """Paired tests between jobs (``GET /v1/compare``)."""
        return self.get("/v1/compare", params={"ids": ",".join(map(str, job_ids))})

    def trials(self, job_id: int) -> dict[str, Any]:
        """A sweep's trial listing (``param_keys``, ``trials``, ``best_trial_id``, ``metric``, ``mode``)."""
        return self.get(f"/v1/jobs/{job_id}/trials")

    def logs(self, job_id: int) -> str:
        return self.get(f"/v1/jobs/{job_id}/logs")

    # -------------------------------------------------------------------------------- events

    def follow(self, job_id: int, after: int | None = None) -> Iterator[StreamEvent]:
        """The job's events after event id ``after`` (all when None), live, until the job has ended."""
        stream = _EventStream(self, job_id, after)
        try:
            while True:
                try:
                    sse = self._reconnecting(stream.next_event)
                except httpx.TransportError as e:  # the budget of failures in a row is spent
                    raise ServiceError(f"lost the event stream from {self.url}: {type(e).__name__}") from e
                if not sse.data:
                    continue  # nothing to report (e.g. a bare id or retry field)
                yield StreamEvent(sse.event, _payload(sse))
                if sse.event == "end":
                    return
        finally:
            stream.close()

    def _reconnecting(self, fn: Any) -> Any:
        """``fn()`` retried on a dropped connection: the configured policy's waits, at most
        ``reconnect_attempts`` retries; the last error re-raised when they are spent."""
        policy = self.settings.reconnect_policy()
        stop = tenacity.stop_after_attempt(self.settings.reconnect_attempts + 1)
        if policy is None:  # reopen at once
            retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(_dropped), stop=stop, reraise=True)
        else:
            retrying = policy.retrying(retry_on=_dropped).copy(stop=stop)
        return retrying(fn)


def _dropped(e: BaseException) -> bool:
    # ``_EventStream`` turns an SSEError (a TransportError too) into a ServiceError first: a wrong
    # content type will not fix itself.
    return isinstance(e, httpx.TransportError)


class _EventStream:
    """One job's event stream, reopened from the last event id seen whenever it is not open."""

    def __init__(self, client: ServiceClient, job_id: int, after: int | None) -> None:
        self.client, self.job_id, self.last_id = client, job_id, after
        self._open = contextlib.ExitStack()  # holds the open stream's response
        self._events: Iterator[ServerSentEvent] | None = None

    def next_event(self) -> ServerSentEvent:
        """The next event; opens the stream first if needed. A stream closed without ``end`` (a
        proxy's idle timeout, a restart) is reopened at once; a dropped one raises its
        ``TransportError`` (after closing it) for the caller's retry policy."""
        try:
            while True:
                if self._events is None:
                    self._events = self._connect().iter_sse()
                sse = next(self._events, None)
                if sse is None:
                    self.close()
                    continue
                if sse.id.isascii() and sse.id.isdigit():
                    self.last_id = int(sse.id)
                return sse
        except SSEError as e:
            self.close()
            raise ServiceError(f"{self.client.url} did not answer with an event stream: {e}") from e
        except BaseException:
            self.close()
            raise

    def _connect(self) -> EventSource:
        headers = {"Last-Event-ID": str(self.last_id)} if self.last_id is not None else {}
        # No read timeout: a quiet job's stream carries only keep-alive comments for long stretches.
        timeout = httpx.Timeout(self.client.settings.request_timeout_s, read=None)
        source = self._open.enter_context(connect_sse(
            self.client.http, "GET", f"/v1/jobs/{self.job_id}/events", params={"follow": "true"},
            headers=headers, timeout=timeout,
        ))
        if source.response.status_code >= 400:
            source.response.read()
            raise ServiceError(http_error(source.response))
        return source

    def close(self) -> None:
        self._events = None
        self._open.close()


def _payload(sse: ServerSentEvent) -> dict[str, Any]:
    try:
        payload = sse.json()
    except ValueError as e:
        raise ServiceError(f"the service sent a malformed {sse.event!r} event: {sse.data[:200]!r}") from e
    if not isinstance(payload, dict):
        raise ServiceError(f"the service sent a {sse.event!r} event that is not a JSON object: "
                           f"{sse.data[:200]!r}")
    return payload


def http_error(r: httpx.Response) -> str:
    """``HTTP <code>: <detail>``, with a hint on what to do about a 401."""
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # 422: one line per offending field
        detail = "; ".join(
            f"{item.get('field', 'body')}: {item.get('msg', item)}" if isinstance(item, dict) else str(item)
            for item in detail
        )
    if r.status_code in (429, 503) and (wait := r.headers.get("retry-after")):
        detail = f"{detail} (retry in {wait} s)"
    if r.status_code == 401:
        detail = f"{detail} (set RAMP_TOKEN, or create one with `rampctl token create NAME`)"
    return f"HTTP {r.status_code}: {detail}"
