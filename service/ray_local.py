"""The embedded Ray head: started by the service when RAY_ADDRESS is unset, stopped with it.

``ray stop`` kills every Ray process on the machine (other services', other users' heads), so it is
never used. Instead the head runs as ``ray start --head --block`` in a new session: every process
Ray spawns (GCS, raylet, dashboard, workers) inherits that session id, and the job drivers Ray
starts in sessions of their own are still descendants of our workers. ``stop()`` terminates exactly
that set -- the session plus its process tree -- and checks that nothing of it is left.

Measured on the 2-core box (ray 2.60): the dashboard answers ~2.5-6 s after the command starts;
SIGTERM to ``ray start --block`` alone "drains" for up to 30 s, hence our own terminate-then-kill.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from workers.contract.retry import RetryPolicy

log = logging.getLogger(__name__)

AUTH_MODES = ("disabled", "token")  # Ray 2.60's RAY_AUTH_MODE values
# Ray puts Unix sockets under <tmp>/session_<date>_<pid>/sockets/...; Linux caps socket paths at
# 107 bytes, which leaves ~45 characters for the temp dir itself.
MAX_TMPDIR_CHARS = 45
RECORD_FILE = "embedded_head.json"
_PORT_FLAGS = (
    "port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)


# Poll the starting head every 0.2 s (the project's retry policy, without growth or jitter).
STARTUP_POLL = RetryPolicy(base_s=0.2, factor=1.0, max_s=0.2, jitter=0.0)


class _NotReady(Exception):
    """The head's job API does not answer yet."""


class RayHeadError(RuntimeError):
    """The embedded head could not be started (the message says why and where its log is)."""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    sid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a process from a later one reusing its pid


def read_proc(pid: int) -> ProcInfo | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    state = rest[0]
    if state in ("Z", "X"):  # zombies are dead; only their parent can reap them
        return None
    return ProcInfo(pid=pid, ppid=int(rest[1]), sid=int(rest[3]), start_ticks=int(rest[19]))


def list_procs() -> dict[int, ProcInfo]:
    procs: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if entry.isascii() and entry.isdigit() and (info := read_proc(int(entry))) is not None:
            procs[info.pid] = info
    return procs


def session_processes(root_pid: int, procs: dict[int, ProcInfo] | None = None) -> dict[int, ProcInfo]:
    """Every live process of the session led by ``root_pid``, plus all descendants of its members.

    The session catches Ray processes whose parent already died (re-parented to init); the
    descendant walk catches job drivers, which Ray starts with ``start_new_session=True``.
    """
    procs = list_procs() if procs is None else procs
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found = {pid: p for pid, p in procs.items() if p.sid == root_pid}
    if root_pid in procs:
        found[root_pid] = procs[root_pid]
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found[child] = procs[child]
                stack.append(child)
    return found


def _signal_if_same(info: ProcInfo, sig: int) -> None:
    current = read_proc(info.pid)
    if current is None or current.start_ticks != info.start_ticks:
        return  # gone, or the pid now belongs to someone else
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(info.pid, sig)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def check_auth_mode(mode: str) -> str:
    if mode not in AUTH_MODES:
        raise ValueError(f"RAY_AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    return mode


@dataclass
class LocalRayHead:
    """One local Ray head owned by this process.

    ``dashboard_port=0`` picks a free port (tests); every other Ray port is always picked free so a
    second head on the machine (another service, another test session) cannot collide with ours.
    """

    tmp_dir: Path
    num_cpus: int | None = None
    auth_mode: str = "disabled"
    dashboard_port: int = 8265
    dashboard_host: str = "127.0.0.1"
    startup_timeout_s: float = 90.0
    ray_executable: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_auth_mode(self.auth_mode)
        self.tmp_dir = Path(self.tmp_dir).expanduser().resolve()
        if len(str(self.tmp_dir)) > MAX_TMPDIR_CHARS:
            raise RayHeadError(
                f"Ray temp dir {self.tmp_dir} is {len(str(self.tmp_dir))} characters long; Ray's Unix "
                f"sockets need it at most {MAX_TMPDIR_CHARS} (set RAMP_RAY_TMPDIR to a shorter path)"
            )
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_ticks: int | None = None
        self._token: str | None = None
        self._api_url: str | None = None  # the dashboard this head serves, known before it answers
        self.dashboard_url: str | None = None

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "head.log"

    @property
    def auth_token(self) -> str | None:
        """The Ray token clients must send (``auth_mode == "token"``), else None."""
        return self._token

    def env(self) -> dict[str, str]:
        """The environment Ray runs under (head, workers, job drivers inherit it)."""
        env = dict(os.environ) | self.extra_env
        env["RAY_TMPDIR"] = str(self.tmp_dir)
        env["RAY_AUTH_MODE"] = self.auth_mode
        # The head must not join the cluster named in the service's own environment.
        env.pop("RAY_ADDRESS", None)
        if self._api_url is not None:
            # Ray Train's PlacementGroupCleaner and other state-API callers inside the cluster
            # otherwise look for "the" local Ray and fail ("Found multiple active Ray instances")
            # when another Ray runs on the machine; the training then never starts.
            env["RAY_API_SERVER_ADDRESS"] = self._api_url
        # Ray Train gives a worker group 60 s to start; workers importing torch on a loaded 2-core
        # box took about that, and the controller kept re-creating the group (docs/reliability.md).
        env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
        if self._token is not None:
            env["RAY_AUTH_TOKEN_PATH"] = str(self._token_path)
            env.pop("RAY_AUTH_TOKEN", None)
        return env

    @property
    def _token_path(self) -> Path:
        return self.tmp_dir / "auth_token"

    def start(self) -> str:
        """Start the head and wait until its Jobs API answers; returns the dashboard URL."""
        if self._proc is not None:
            raise RayHeadError(f"embedded Ray head already started (pid {self._proc.pid})")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        reap_stale_head(self.tmp_dir)
        if self.auth_mode == "token":
            self._token = secrets.token_hex(32)
            fd = os.open(self._token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._token)
        port = self.dashboard_port or free_port(self.dashboard_host)
        if not _port_free(port, self.dashboard_host):
            raise RayHeadError(
                f"cannot start the embedded Ray head: dashboard port {port} is in use (another Ray "
                "head?); set RAMP_RAY_DASHBOARD_URL to a free port or RAY_ADDRESS to use that cluster"
            )
        cmd = self._command(port)
        self._api_url = f"http://{self.dashboard_host}:{port}"
        log.info("starting embedded Ray head", extra={"cmd": " ".join(cmd), "tmp_dir": str(self.tmp_dir)})
        started = time.monotonic()
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        info = read_proc(self._proc.pid)
        self._start_ticks = info.start_ticks if info else None
        self._write_record()
        atexit.register(self.stop)
        url = f"http://{self.dashboard_host}:{port}"
        try:
            self._wait_ready(url, started)
        except BaseException:
            self.stop()
            raise
        self.dashboard_url = url
        seconds = round(time.monotonic() - started, 2)
        log.info("embedded Ray head ready", extra={"dashboard": url, "seconds": seconds})
        return url

    def _command(self, dashboard_port: int) -> list[str]:
        ray = self.ray_executable or shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        cmd = [
            ray, "start", "--head", "--block", "--disable-usage-stats",
            f"--temp-dir={self.tmp_dir}",
            f"--dashboard-host={self.dashboard_host}", f"--dashboard-port={dashboard_port}",
            "--include-dashboard=true",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        cmd += [f"--{flag}={free_port()}" for flag in _PORT_FLAGS]
        return cmd

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _wait_ready(self, url: str, started: float) -> None:
        # /api/jobs/ (not only /api/version): the job module loads after the dashboard answers.
        deadline = started + self.startup_timeout_s

        def probe() -> None:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RayHeadError(
                    f"embedded Ray head exited with code {self._proc.returncode} during start-up; "
                    f"see {self.log_path}: {tail_of(self.log_path)}"
                )
            try:
                r = httpx.get(f"{url}/api/jobs/", headers=self._headers(), timeout=2.0)
            except httpx.HTTPError as e:
                raise _NotReady(str(e)) from e
            if r.status_code != 200:
                raise _NotReady(f"HTTP {r.status_code}")

        try:
            STARTUP_POLL.retrying(retry_on=lambda e: isinstance(e, _NotReady),
                                  deadline=lambda: deadline)(probe)
        except _NotReady:
            raise RayHeadError(
                f"embedded Ray head did not answer at {url} within {self.startup_timeout_s:.0f} s; "
                f"see {self.log_path}: {tail_of(self.log_path)}"
            ) from None

    def exit_code(self) -> int | None:
        """The head process's exit code once it has died on its own; None while it runs (or was
        never started, or was stopped by ``stop``)."""
        return None if self._proc is None else self._proc.poll()

    def restart(self) -> str:
        """Start the head again after it died, on the same dashboard port (the job pages link to
        it); what is left of the dead session is killed first. Returns the dashboard URL."""
        if self._proc is not None:
            with contextlib.suppress(RayHeadError, OSError):
                kill_session(self._proc.pid, grace_s=0.5, start_ticks=self._start_ticks)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            atexit.unregister(self.stop)
            self._proc = None
        if self.dashboard_url is not None:
            self.dashboard_port = int(self.dashboard_url.rsplit(":", 1)[1])
        return self.start()

    def processes(self) -> dict[int, ProcInfo]:
        """This head's live processes (empty once stopped)."""
        if self._proc is None:
            return {}
        root = read_proc(self._proc.pid)
        if root is not None and root.start_ticks != self._start_ticks:
            return {}
        return session_processes(self._proc.pid)

    def stop(self, grace_s: float = 2.0) -> None:
        """Terminate this head's processes (SIGTERM, then SIGKILL after ``grace_s``); idempotent."""
        if self._proc is None:
            return
        atexit.unregister(self.stop)
        kill_session(self._proc.pid, grace_s=grace_s, start_ticks=self._start_ticks)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        self._proc = None
        self.dashboard_url = None
        with contextlib.suppress(FileNotFoundError):
            (self.tmp_dir / RECORD_FILE).unlink()
        log.info("embedded Ray head stopped")

    def __enter__(self) -> LocalRayHead:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_record(self) -> None:
        assert self._proc is not None
        record = {"pid": self._proc.pid, "start_ticks": self._start_ticks}
        (self.tmp_dir / RECORD_FILE).write_text(json.dumps(record))


KILL_WAIT_S = 30.0


def kill_session(root_pid: int, *, grace_s: float = 2.0, start_ticks: int | None = None) -> None:
    """Terminate the session led by ``root_pid`` and its descendants; raise if any survive."""
    root = read_proc(root_pid)
    if start_ticks is not None and root is not None and root.start_ticks != start_ticks:
        return  # the pid was reused: that is not our head
    targets = session_processes(root_pid)
    # `ray start --block` answers SIGTERM with a drain of up to 30 s; it only supervises, so it
    # goes first and hard. The components then get SIGTERM and a grace period to exit cleanly.
    if root_pid in targets:
        _signal_if_same(targets[root_pid], signal.SIGKILL)
    for info in targets.values():
        _signal_if_same(info, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(targets):
        time.sleep(0.1)
    # Ray may spawn replacements while it shuts down: re-scan and kill until the set is empty. A
    # killed process can take seconds to finish exiting on a loaded machine: bound by time, not tries.
    deadline = time.monotonic() + KILL_WAIT_S
    while True:
        targets |= session_processes(root_pid)
        live = _alive(targets)
        if not live:
            return
        if time.monotonic() >= deadline:
            break
        for info in live:
            _signal_if_same(info, signal.SIGKILL)
        time.sleep(0.1)
    left = ", ".join(str(i.pid) for i in _alive(targets))
    raise RayHeadError(f"Ray head session {root_pid}: processes {left} survived SIGKILL")


def _alive(targets: dict[int, ProcInfo]) -> list[ProcInfo]:
    out = []
    for info in targets.values():
        current = read_proc(info.pid)
        if current is not None and current.start_ticks == info.start_ticks:
            out.append(info)
    return out


def reap_stale_head(tmp_dir: Path) -> bool:
    """Kill a head that a previous, crashed service left running from this same temp dir.

    The record names the head's pid and start time, so only that exact process is touched.
    """
    path = Path(tmp_dir) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
        pid, ticks = int(record["pid"]), record.get("start_ticks")
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return False
    info = read_proc(pid)
    path.unlink(missing_ok=True)
    if info is None or info.start_ticks != ticks:
        return False
    log.warning("stopping a stale embedded Ray head left by a previous run", extra={"pid": pid})
    kill_session(pid, start_ticks=ticks)
    return True


def tail_of(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
