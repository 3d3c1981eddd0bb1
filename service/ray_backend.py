"""The dispatcher's view of Ray: submit a job, ask its status, stop it, read its logs.

``RayBackend`` is the protocol (tests and the dispatcher depend on it); ``RayJobsBackend`` speaks
to a Ray cluster's Jobs API through ``ray.job_submission.JobSubmissionClient``. Ray is imported
lazily, inside the backend, so importing the service (and its tests) stays light.

Measured against a local head on the 2-core box (ray 2.60): submit ~0.02 s (1.5 s for the first
one, while the job agent warms up); PENDING -> RUNNING ~0.8 s; stop -> STOPPED ~1.4 s; unknown ids
answer 404; a job waiting for resources stays PENDING (and stays PENDING for a while after a stop).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

RAY_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")
RAY_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_STATUS_CODE = re.compile(r"status code (\d{3})")


class RayUnavailable(ConnectionError):
    """Ray's Jobs API could not be reached (down, restarting, timing out): try again later."""


class RayRequestError(RuntimeError):
    """Ray answered with an error that retrying will not fix."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class RayJobExists(RayRequestError):
    """A job with this submission id already exists (a previous submit got through)."""


@dataclass(frozen=True)
class RayJobInfo:
    status: str  # one of RAY_STATUSES
    message: str | None = None
    error_type: str | None = None
    start_time_ms: int | None = None
    end_time_ms: int | None = None
    exit_code: int | None = None


@runtime_checkable
class RayBackend(Protocol):
    """What the dispatcher, the logs endpoint and the readiness probe need from Ray."""

    dashboard_url: str | None

    def submit(
        self,
        entrypoint: str,
        submission_id: str,
        *,
        env_vars: dict[str, str] | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Start ``entrypoint`` as a Ray job; returns the Ray job (submission) id."""

    def status(self, ray_job_id: str) -> str | None:
        """PENDING / RUNNING / SUCCEEDED / FAILED / STOPPED, or None when Ray does not know the id."""

    def info(self, ray_job_id: str) -> RayJobInfo | None:
        """Status plus Ray's message (why it failed), or None when unknown."""

    def stop(self, ray_job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL); False if it had already finished."""

    def logs(self, ray_job_id: str) -> str | None:
        """The driver's stdout/stderr as Ray captured it, or None when unknown."""

    def ping(self) -> bool:
        """True when the Jobs API answers."""


def _status_code(exc: BaseException) -> int | None:
    m = _STATUS_CODE.search(str(exc))
    return int(m.group(1)) if m else None


def _client_class() -> type:
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):  # type: ignore[misc]
        # The SDK's requests carry no timeout: a hung dashboard would hang the dispatcher thread.
        timeout_s: float = 15.0

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self.timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


class RayJobsBackend:
    """A Ray cluster's Jobs API (``address``: the dashboard URL, e.g. http://127.0.0.1:8265).

    The client is created on first use and re-created after a connection failure, so the service
    can start before Ray does and survives a Ray restart. ``auth_token``: Ray's token when the
    cluster runs with RAY_AUTH_MODE=token.
    """

    def __init__(self, address: str, *, auth_token: str | None = None, timeout_s: float = 15.0) -> None:
        self.dashboard_url: str | None = address.rstrip("/")
        self._auth_token = auth_token
        self._timeout_s = timeout_s
        self._client: Any = None
        self.last_ping_error: str | None = None  # why the latest ping failed
        self._lock = threading.Lock()

    def reconnect(self, address: str, *, auth_token: str | None) -> None:
        """Talk to a (re)started cluster from now on: a new address or token, a fresh client."""
        with self._lock:
            self.dashboard_url = address.rstrip("/")
            self._auth_token = auth_token
            self._client = None

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            cls = _client_class()
            headers = {"Authorization": f"Bearer {self._auth_token}"} if self._auth_token else None
            try:
                client = cls(self.dashboard_url, headers=headers)
            except Exception as e:  # the constructor already calls /api/version
                failure = e
            else:
                client.timeout_s = self._timeout_s
                self._client = client
                return client
        # Outside the lock: _translate takes it (to forget the client), and it is not reentrant --
        # translating in there deadlocked the first caller and every later one while Ray was down.
        raise self._translate(failure, "connect") from failure

    def _translate(self, exc: Exception, what: str) -> Exception:
        import requests

        if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError):
            with self._lock:
                self._client = None
            return RayUnavailable(f"Ray Jobs API at {self.dashboard_url} unreachable ({what}): {exc}")
        code = _status_code(exc)
        # The dashboard wraps its job agent's 400 in a 500, so look at the message first.
        if "already exists" in str(exc):
            return RayJobExists(f"Ray {what}: {str(exc)[-300:]}", code)
        if code is not None and code >= 500:
            return RayUnavailable(f"Ray Jobs API at {self.dashboard_url} failed ({what}): {exc}")
        return RayRequestError(f"Ray {what} failed: {exc}", code)

    def _call(self, what: str, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        client = self._get_client()
        try:
            return getattr(client, fn_name)(*args, **kwargs)
        except Exception as e:
            raise self._translate(e, what) from e

    def submit(
        self,
        entrypoint: str,
        submission_id: str,
        *,
        env_vars: dict[str, str] | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
        return str(
            self._call(
                f"submit {submission_id}", "submit_job",
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus, metadata=metadata,
            )
        )

    def info(self, ray_job_id: str) -> RayJobInfo | None:
        try:
            raw = self._call(f"info {ray_job_id}", "get_job_info", ray_job_id)
        except RayRequestError as e:
            if e.status_code == 404:
                return None
            raise
        status = getattr(raw.status, "value", raw.status)
        return RayJobInfo(
            status=str(status), message=raw.message, error_type=raw.error_type,
            start_time_ms=raw.start_time, end_time_ms=raw.end_time,
            exit_code=getattr(raw, "driver_exit_code", None),
        )

    def status(self, ray_job_id: str) -> str | None:
        info = self.info(ray_job_id)
        return info.status if info is not None else None

    def stop(self, ray_job_id: str) -> bool:
        try:
            return bool(self._call(f"stop {ray_job_id}", "stop_job", ray_job_id))
        except RayRequestError as e:
            if e.status_code == 404:
                return False
            raise

    def logs(self, ray_job_id: str) -> str | None:
        try:
            return str(self._call(f"logs {ray_job_id}", "get_job_logs", ray_job_id))
        except RayRequestError as e:
            if e.status_code == 404:
                return None
            raise

    def ping(self) -> bool:
        try:
            self._call("ping", "get_version")
        except (RayUnavailable, RayRequestError) as e:
            self.last_ping_error = str(e)  # what /readyz tells (the dispatcher pings too: either is news)
            return False
        self.last_ping_error = None
        return True
