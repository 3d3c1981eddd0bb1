"""Keeping the embedded Ray head alive: a service that started its own head restarts it when it dies.

Without this, a head killed after start-up (OOM killer, a stray ``ray stop``, a crash) left the
service logging "Ray unavailable; will retry" forever: nothing would ever start a head again. Jobs
that were running on the dead head are not resumed here; the dispatcher's reconcile finds them
vanished and fails or retries them by their ``max_retries`` (docs/reliability.md).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Protocol

from service.ray_local import RayHeadError, tail_of

log = logging.getLogger(__name__)


class Head(Protocol):
    """What the watch needs of ``LocalRayHead``."""

    @property
    def log_path(self) -> Path: ...

    def exit_code(self) -> int | None: ...

    def restart(self) -> str: ...

    @property
    def auth_token(self) -> str | None: ...


class Reconnectable(Protocol):
    def reconnect(self, address: str, *, auth_token: str | None) -> None: ...


class HeadWatch:
    """Every ``interval_s``: is the head still running? If it died, restart it and point the
    backend at it. A failed restart is logged and tried again at the next look."""

    def __init__(self, head: Head, backend: Reconnectable, interval_s: float) -> None:
        self.head, self.backend, self.interval_s = head, backend, interval_s
        self.restarts = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Look once; restart a dead head. True when the head runs after the look."""
        code = self.head.exit_code()
        if code is None:
            return True
        started = time.monotonic()
        log.error("embedded Ray head exited; restarting it",
                  extra={"exit_code": code, "log_tail": tail_of(self.head.log_path, 5)})
        try:
            url = self.head.restart()
        except RayHeadError as e:
            self.last_error = str(e)
            log.error("embedded Ray head restart failed; will try again",
                      extra={"error": str(e)[:500], "retry_in_s": self.interval_s})
            return False
        self.backend.reconnect(url, auth_token=self.head.auth_token)
        self.restarts += 1
        self.last_error = None
        log.warning("embedded Ray head restarted", extra={
            "dashboard": url, "seconds": round(time.monotonic() - started, 2), "restarts": self.restarts})
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ray-head-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking (before the head is stopped on purpose, or the watch would restart it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # the watch must outlive any one failed look
                log.exception("embedded Ray head watch failed; will look again")
