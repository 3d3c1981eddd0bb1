"""What the app's lifespan starts and stops: the Ray connection (an embedded head when RAY_ADDRESS
is unset) and the dispatcher.

``start(app, settings)`` blocks until Ray answers (the embedded head takes ~3-8 s) and sets
``app.state.backend`` (the logs endpoint and /readyz use it), ``app.state.dispatcher`` and
``app.state.runtime``; ``stop(app)`` stops the dispatcher, then the embedded head -- exactly the
processes it started (``service.ray_local``), never other Ray clusters on the machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.dispatcher import Dispatcher, DispatchPolicy
from service.head_watch import HeadWatch
from service.ray_backend import RayBackend, RayJobsBackend
from service.ray_local import MAX_TMPDIR_CHARS, LocalRayHead

log = logging.getLogger(__name__)


class RuntimeConfigError(ValueError):
    """The settings do not say how to reach Ray."""


def embedded_tmpdir(settings: Settings) -> Path:
    """The embedded head's RAY_TMPDIR; a short stand-in under /tmp when the configured one is too
    long for Ray's Unix sockets (stable per configured path, so a stale head is still found)."""
    wanted = Path(str(settings.ray_tmpdir)).expanduser()
    if len(str(wanted.resolve())) <= MAX_TMPDIR_CHARS:
        return wanted
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"ramp-ray-{digest}"


def _port_of(url: str | None, default: int = 8265) -> int:
    if not url:
        return default
    port = urlparse(url).port
    return default if port is None else port


def jobs_api_address(settings: Settings) -> str:
    """The HTTP address of an external cluster's Jobs API (its dashboard)."""
    if settings.ray_dashboard_url:
        return settings.ray_dashboard_url
    address = str(settings.ray_address)
    if address.startswith(("http://", "https://")):
        return address
    raise RuntimeConfigError(
        f"RAY_ADDRESS={address!r} is not an HTTP address; the service submits through Ray's Jobs API, "
        "so set RAY_ADDRESS (or RAMP_RAY_DASHBOARD_URL) to the dashboard, e.g. http://ray-head:8265"
    )


def external_auth_token(settings: Settings) -> str | None:
    """Ray's token for a token-auth cluster: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH."""
    if settings.ray_auth_mode != "token":
        return None
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    try:
        return Path(path).read_text().strip() or None
    except FileNotFoundError:
        raise RuntimeConfigError(
            f"RAMP_RAY_AUTH_MODE=token but no Ray token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH ({path})"
        ) from None


class ServiceRuntime:
    """The Ray side of one service process."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        backend: RayBackend | None = None,
        policy: DispatchPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.backend = backend
        self.owns_backend = backend is None
        self.policy = policy or DispatchPolicy(
            interval_s=settings.dispatch_interval_s, retry_delay_s=settings.retry_delay_s
        )
        self.head: LocalRayHead | None = None
        self.head_watch: HeadWatch | None = None
        self.dispatcher: Dispatcher | None = None

    def start(self) -> None:
        if self.backend is None:
            self.backend = self._connect()
        if self.head is not None and self.settings.ray_head_check_s > 0:
            assert isinstance(self.backend, RayJobsBackend)
            self.head_watch = HeadWatch(self.head, self.backend, self.settings.ray_head_check_s)
            self.head_watch.start()
        self.dispatcher = Dispatcher(self.session_factory, self.backend, self.settings, policy=self.policy)
        self.dispatcher.start()
        log.info("dispatcher started", extra={"claimer": self.dispatcher.claimer,
                                              "ray_dashboard": self.settings.ray_dashboard_url})

    def _connect(self) -> RayBackend:
        settings = self.settings
        if not settings.embedded:
            return RayJobsBackend(jobs_api_address(settings), auth_token=external_auth_token(settings))
        self.head = LocalRayHead(
            tmp_dir=embedded_tmpdir(settings),
            num_cpus=settings.ray_num_cpus,
            auth_mode=settings.ray_auth_mode,
            dashboard_port=_port_of(settings.ray_dashboard_url),
            startup_timeout_s=settings.ray_start_timeout_s,
        )
        url = self.head.start()
        # The job views link to the dashboard actually running (its port may have been picked free).
        settings.ray_dashboard_url = url
        return RayJobsBackend(url, auth_token=self.head.auth_token)

    def stop(self) -> None:
        if self.head_watch is not None:  # first: a head stopped on purpose is not to be restarted
            self.head_watch.stop()
            self.head_watch = None
        try:
            if self.dispatcher is not None:
                self.dispatcher.stop()
        finally:
            if self.head is not None:
                self.head.stop()
                self.head = None


def start(app: Any, settings: Settings) -> ServiceRuntime:
    """Lifespan hook: connect to Ray (starting the embedded head if needed) and start dispatching."""
    runtime = ServiceRuntime(settings, app.state.session_factory, backend=getattr(app.state, "backend", None))
    try:
        runtime.start()
    except BaseException:
        runtime.stop()
        raise
    app.state.runtime = runtime
    app.state.backend = runtime.backend
    app.state.dispatcher = runtime.dispatcher
    return runtime


def stop(app: Any) -> None:
    """Lifespan hook: stop the dispatcher, then the embedded head (if this process started one)."""
    runtime: ServiceRuntime | None = getattr(app.state, "runtime", None)
    if runtime is not None:
        runtime.stop()
        app.state.runtime = None
        app.state.dispatcher = None
        if runtime.owns_backend:  # a restarted app connects afresh (the embedded head is gone)
            app.state.backend = None
