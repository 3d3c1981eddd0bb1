"""Helpers of the dispatcher tests on a fake Ray: job creation and lookup, fake Rays that misbehave
in one particular way, a manual clock, and a TCP proxy that can cut a connection path."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from exec_support import FakeBackend, FakeRayJob, tiny_train_spec
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job
from service.jobs import store
from service.ray_backend import RayJobInfo, RayUnavailable


def create_job(factory: sessionmaker[Session], **spec: Any) -> int:
    with factory() as s:
        return store.create_job(s, tiny_train_spec(**spec), kind="train", idempotency_key=None,
                                token_id=None).id


def get_job(factory: sessionmaker[Session], job_id: int) -> Job:
    with factory() as s:
        return store.get_job(s, job_id)


def ray_job(backend: FakeBackend, factory: sessionmaker[Session], job_id: int) -> FakeRayJob:
    return backend.jobs[get_job(factory, job_id).ray_job_id]


class ManualClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingBackend(FakeBackend):
    """Remembers every argument of every call, to show what Ray was (and was not) given."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def submit(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("submit", args, kwargs))
        return super().submit(*args, **kwargs)


@dataclass
class AcceptThenTimeout(FakeBackend):
    """Ray accepts the next ``times`` submissions but the answers never arrive (a read timeout)."""

    times: int = 1

    def submit(self, *args: Any, **kwargs: Any) -> str:
        ray_id = super().submit(*args, **kwargs)
        if self.times > 0:
            self.times -= 1
            raise RayUnavailable(f"read timed out submitting {ray_id}")
        return ray_id


@dataclass
class BrokenInfo(FakeBackend):
    """``info`` raises an unexpected error for the Ray jobs in ``broken``."""

    broken: set[str] = field(default_factory=set)

    def info(self, ray_job_id: str) -> RayJobInfo | None:
        if ray_job_id in self.broken:
            raise RuntimeError(f"boom reading {ray_job_id}")
        return super().info(ray_job_id)


class TcpProxy:
    """127.0.0.1:``port`` forwarding to ``target`` while open; ``close()`` refuses new connections
    and cuts the open ones (the database "goes away"), ``open()`` serves again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the timeout was for connecting; idle connections live on
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
