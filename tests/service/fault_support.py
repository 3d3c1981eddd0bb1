"""Helpers of the fault-tolerance tests (test_kill.py, test_db_blip.py): the service as a real
``rampctl serve`` subprocess that can be SIGKILLed and restarted, and a TCP proxy in front of
PostgreSQL that can refuse, stall and restore the database path. Imported by test modules."""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- the service process


def service_command() -> list[str]:
    """``rampctl serve`` with this interpreter (the console script when installed)."""
    script = Path(sys.executable).with_name("rampctl")
    if script.is_file():
        return [str(script), "serve"]
    return [sys.executable, "-c", "from rampctl.main import app; app()", "serve"]


class ServiceProcess:
    """``rampctl serve`` (uvicorn: API + dispatcher) in a subprocess configured by environment
    variables, on a fixed port so job drivers find it again after a restart. ``start()`` waits
    until /healthz answers; ``kill()`` is a real SIGKILL; the log (every run appended) is
    ``home/service.log``."""

    def __init__(self, home: Path, port: int, env: dict[str, str], token: str) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.env = os.environ | {"RAMP_HOME": str(home), "RAMP_PORT": str(port),
                                 "RAMP_PUBLIC_URL": self.url, "RAMP_ADMIN_TOKEN": token} | env
        self.log_path = home / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.auth, timeout=kwargs.pop("timeout", 30), **kwargs)

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait until /healthz answers; returns the seconds it took."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts + 1} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(service_command(), env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True)
        self.starts += 1
        deadline = started + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited ({self.proc.returncode}) during start-up:\n"
                                     + self.log_tail())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            if time.monotonic() > deadline:
                raise AssertionError(f"the service did not answer within {timeout_s} s:\n" + self.log_tail())
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no lifespan, no flush -- a crash."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL, self.proc.returncode
        self.kills += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a graceful stop), SIGKILL after ``timeout_s`` (with a stack dump in the log)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            dump_stacks(self.proc.pid, self.log_path)
            self.proc.kill()
            self.proc.wait(30)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def dump_stacks(pid: int, log_path: Path) -> None:
    """Append ``py-spy dump`` of ``pid`` to ``log_path`` when py-spy is installed (diagnostics of a
    process that would not stop)."""
    spy = Path(sys.executable).with_name("py-spy")
    tool = str(spy) if spy.is_file() else shutil.which("py-spy")
    if tool is None:
        return
    with contextlib.suppress(Exception):
        out = subprocess.run([tool, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        with open(log_path, "a") as log:
            log.write(f"\n===== py-spy dump of {pid} (it did not stop) =====\n{out.stdout}{out.stderr}\n")


@contextlib.contextmanager
def service_process(home: Path, port: int, env: dict[str, str], token: str) -> Iterator[ServiceProcess]:
    service = ServiceProcess(home, port, env, token)
    try:
        yield service
    finally:
        service.stop()


# ----------------------------------------------------------------------------------- the proxy


class FaultProxy:
    """127.0.0.1:``port`` -> ``target``, with three states:

    - ``restore()``: forwarding (the initial state);
    - ``refuse()``: the database is down: every open connection is reset and new connections are
      refused (the listening socket is closed; ``restore()`` listens on the same port again);
    - ``stall()``: the database hangs: connections are accepted but nothing is forwarded either
      way, on new and on open connections (a frozen server behind a live network path).

    Leaving ``stall()`` resets the connections it held (their clients have given up by then).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.state = "closed"
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._flowing = threading.Event()
        self.accepted = 0

    def __enter__(self) -> FaultProxy:
        return self.restore()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- states

    def restore(self) -> FaultProxy:
        with self._lock:
            if self.state == "stall":
                self._reset_all()
            self.state = "open"
        self._flowing.set()
        self._listen()
        return self

    def refuse(self) -> None:
        with self._lock:
            self.state = "refuse"
            listener, self._listener = self._listener, None
            self._reset_all()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def stall(self) -> None:
        self._flowing.clear()
        with self._lock:
            self.state = "stall"
        self._listen()

    def shutdown(self) -> None:
        self.refuse()
        self.state = "closed"
        self._flowing.set()

    # -- plumbing

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="fault-proxy").start()

    def _reset_all(self) -> None:
        """Reset (RST, not FIN) every connection; called with the lock held."""
        pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                if s is not None:
                    _reset(s)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by refuse()
            self.accepted += 1
            with self._lock:
                stalled = self.state == "stall"
                if stalled:
                    self._pairs.append((client, None))  # held open, never answered
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _reset(client)
                    _reset(upstream)
                    return
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                if not self._flowing.is_set():
                    # Stalled: read nothing, forward nothing (bytes wait in the kernel's buffers).
                    self._flowing.wait(0.1)
                    if a.fileno() < 0 or b.fileno() < 0:
                        return
                    continue
                for key, _ in sel.select(0.1):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    with contextlib.suppress(OSError):
        s.close()

