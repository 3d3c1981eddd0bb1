"""A real multi-node Ray cluster on one machine, for the multi-node and node-loss tests.

A head (``service.ray_local.LocalRayHead``: ``ray start --head --block`` in its own session, no
CPUs, so every Ray Train worker and Tune trial runs on a worker node) and worker nodes, each a
separate ``ray start --address=<head> --block`` process in a session of its own, with its own temp
dir, its own ports and a custom resource named after it (``{"node_a": 1}``), so where Ray placed
something can be read back (node id -> name) and asked for.

Only this cluster's processes are ever signalled: a node is stopped (or SIGKILLed, to simulate a
lost machine) by its session -- the ``ray start`` process, its raylet, agents and workers -- never
with ``ray stop``, which would kill every Ray process of the machine (other engineers' too).

Environment of every node (inherited by its raylet, and so by every worker and actor on it):
- ``RAY_API_SERVER_ADDRESS``: this cluster's dashboard. Ray Train's ``PlacementGroupCleaner`` and
  other state-API callers otherwise look for "the" local cluster and fail with "Found multiple
  active Ray instances" when another Ray runs on the machine.
- ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``: Ray Train v2 gives a worker group 60 s to start; on
  a loaded 2-core box workers importing torch took about that long and the controller kept
  re-creating the group (docs/reliability.md). Generous here; the tests bound their own waits.
- ``PYTHONPATH``: the code under test (a worktree), for job drivers and workers alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exec_support import short_tmpdir, wait_for

from service.ray_local import (
    LocalRayHead,
    ProcInfo,
    RayHeadError,
    free_port,
    kill_session,
    read_proc,
    session_processes,
)

ROOT = Path(__file__).resolve().parents[2]
NODE_PORT_FLAGS = (
    "node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port", "runtime-env-agent-port",
)
# Each node runs its workers on its own port range (Ray's default range would be shared by every
# node), below the kernel's ephemeral ports (32768+) that free_port() hands out.
WORKER_PORTS_PER_NODE = 300


def cluster_env(dashboard_url: str) -> dict[str, str]:
    """What every node of the cluster adds to the environment (see the module docstring)."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "RAY_API_SERVER_ADDRESS": dashboard_url,
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
        "PYTHONPATH": pythonpath,
        "OMP_NUM_THREADS": "1",
        "RAY_AUTH_MODE": "disabled",
    }


@dataclass
class WorkerNode:
    name: str  # also its custom resource
    cpus: int
    tmp_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    start_ticks: int | None = None
    node_id: str | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "node.log"

    def processes(self) -> dict[int, ProcInfo]:
        if self.proc is None:
            return {}
        root = read_proc(self.proc.pid)
        if root is not None and root.start_ticks != self.start_ticks:
            return {}
        return session_processes(self.proc.pid)


@dataclass
class LocalRayCluster:
    """``with LocalRayCluster(nodes={"node_a": 1, "node_b": 1}) as cluster:`` -- a head without CPUs
    and one worker node per entry (name -> CPUs). ``cluster.dashboard_url`` is what RAY_ADDRESS
    names; ``cluster.node_name(node_id)`` says which node a Ray node id is."""

    nodes: dict[str, int]
    head_cpus: int = 0
    startup_timeout_s: float = 600.0
    root: Path = field(default_factory=lambda: short_tmpdir("rampc-"))

    def __post_init__(self) -> None:
        self.head: LocalRayHead | None = None
        self.dashboard_url: str | None = None
        self.gcs_address: str | None = None
        self.head_node_id: str | None = None
        self.workers: dict[str, WorkerNode] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> LocalRayCluster:
        started = time.monotonic()
        port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{port}"
        self.head = self._new_head(port)
        self._start_head(started)
        self.timings["head_s"] = time.monotonic() - started
        for i, (name, cpus) in enumerate(self.nodes.items()):
            self.workers[name] = WorkerNode(name, cpus, self.root / f"n{i}")
            self.start_node(name)
        self.timings["cluster_s"] = time.monotonic() - started
        return self

    def _new_head(self, port: int | None = None) -> LocalRayHead:
        """A head on the cluster's dashboard port (its URL is in every node's environment)."""
        assert self.dashboard_url is not None
        port = port or int(self.dashboard_url.rsplit(":", 1)[1])
        return LocalRayHead(
            tmp_dir=self.root / "h", num_cpus=self.head_cpus, dashboard_port=port, auth_mode="disabled",
            startup_timeout_s=self.startup_timeout_s, extra_env=cluster_env(self.dashboard_url),
        )

    def _start_head(self, started: float) -> None:
        """Start the head and wait for its GCS address and its node; start it again (fresh ports)
        when it dies on the way. Seen in a run: the head's raylet could not bind a port another
        process had just taken ("Failed to start the grpc server ... Address already in use"),
        ``ray start`` exited after its dashboard had answered, and nothing else would notice."""
        assert self.head is not None
        address_file = self.head.tmp_dir / "ray_current_cluster"
        deadline = started + self.startup_timeout_s
        while True:
            address_file.unlink(missing_ok=True)  # a dead try's address must not be read

            def up() -> str | None:
                assert self.head is not None
                if self.head.exit_code() is not None:
                    raise _NodeExited(self.head.exit_code())
                # `ray start --head` writes the GCS address it bound into its temp dir.
                return address_file.is_file() and address_file.read_text().strip() or None

            try:
                try:
                    self.head.start()
                except RayHeadError as e:  # it exited before its dashboard answered
                    raise _NodeExited(str(e)) from None
                self.gcs_address = wait_for(up, max(1.0, deadline - time.monotonic()),
                                            f"the head's GCS address in {address_file}", interval_s=0.2)
                self.head_node_id = self._wait_nodes({"head"}, exit_code=self.head.exit_code,
                                                     deadline=deadline)["head"]
                return
            except _NodeExited:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the Ray head kept dying during start-up; see "
                                         f"{self.head.log_path}: {_tail(self.head.log_path)}") from None
                self.head.stop(grace_s=0.5)
                self.head = self._new_head()

    def _node_command(self, node: WorkerNode, index: int) -> list[str]:
        assert self.gcs_address is not None
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        host = self.gcs_address.rsplit(":", 1)[0]
        low = 20000 + ((os.getpid() % 12) * 3 + index) * WORKER_PORTS_PER_NODE
        cmd = [
            ray, "start", f"--address={self.gcs_address}", "--block", "--disable-usage-stats",
            f"--temp-dir={node.tmp_dir}", f"--num-cpus={node.cpus}", "--num-gpus=0",
            f"--resources={json.dumps({node.name: 1})}", f"--node-ip-address={host}",
            "--object-store-memory=100000000",
        ]
        cmd += [f"--{flag}={free_port()}" for flag in NODE_PORT_FLAGS]
        # Worker ports: a free-looking range per node (Ray checks each port before using it).
        cmd += [f"--min-worker-port={low}", f"--max-worker-port={low + WORKER_PORTS_PER_NODE - 1}"]
        return cmd

    def start_node(self, name: str) -> str:
        """Start (or restart) worker node ``name`` and wait until the head lists it alive.

        ``ray start`` gives a worker node's raylet a fixed 30 s to register with the GCS and exits
        when it misses it (seen at a load average above 20): then the node is started again, until
        ``startup_timeout_s``."""
        node = self.workers[name]
        index = list(self.workers).index(name)
        node.tmp_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.startup_timeout_s
        started = time.monotonic()
        assert self.head is not None
        env = self.head.env() | {"RAY_TMPDIR": str(node.tmp_dir)}
        while True:
            self.stop_node(name)  # a previous try's leftovers
            with open(node.log_path, "ab") as out:
                node.proc = subprocess.Popen(
                    self._node_command(node, index), env=env, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            info = read_proc(node.proc.pid)
            node.start_ticks = info.start_ticks if info else None
            node.starts += 1
            try:
                node.node_id = self._wait_nodes({name}, exit_code=node.proc.poll, deadline=deadline)[name]
                self.timings[f"{name}_s"] = time.monotonic() - started
                return node.node_id
            except _NodeExited:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Ray node {name} did not join within {self.startup_timeout_s} s "
                        f"({node.starts} starts); see {node.log_path}: {_tail(node.log_path)}"
                    ) from None

    def _wait_nodes(self, names: set[str], *, exit_code: Callable[[], int | None] | None = None,
                    deadline: float | None = None) -> dict[str, str]:
        """Node ids of ``names`` ("head" or a worker's resource name) once the GCS lists them alive."""
        deadline = deadline or time.monotonic() + self.startup_timeout_s
        while True:
            found = {}
            for n in self.alive_nodes():
                if n["is_head_node"] and "head" in names:
                    found["head"] = n["node_id"]
                for name in names & set(n["resources_total"]):
                    found[name] = n["node_id"]
            if set(found) >= names:
                return found
            if exit_code is not None and (code := exit_code()) is not None:
                raise _NodeExited(code)
            if time.monotonic() > deadline:
                raise AssertionError(f"Ray nodes {sorted(names - set(found))} not alive in time")
            time.sleep(0.5)

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.list_nodes() if n["state"] == "ALIVE"]

    def list_nodes(self) -> list[dict[str, Any]]:
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.dashboard_url, detail=True, raise_on_missing_output=False)
            return [_as_dict(n) for n in nodes]
        except Exception:  # the dashboard is not up yet, or busy: the callers poll
            return []

    def node_name(self, node_id: str) -> str:
        if node_id == self.head_node_id:
            return "head"
        for name, node in self.workers.items():
            if node.node_id == node_id:
                return name
        return f"unknown node {node_id[:8]}"

    def kill_node(self, name: str) -> list[int]:
        """A lost machine: SIGKILL every process of node ``name`` at once (its ``ray start``, raylet,
        agents and workers), no drain, no goodbye to the GCS. Returns the pids killed."""
        node = self.workers[name]
        procs = node.processes()
        for info in procs.values():
            current = read_proc(info.pid)
            if current is not None and current.start_ticks == info.start_ticks:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(info.pid, signal.SIGKILL)
        # Anything the node spawned meanwhile (Ray restarts nothing without its raylet) goes too.
        if node.proc is not None:
            kill_session(node.proc.pid, grace_s=0.0, start_ticks=node.start_ticks)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=30)
        return sorted(procs)

    def wait_node_dead(self, name: str, timeout_s: float = 300.0) -> float:
        """Seconds until the GCS marks node ``name`` dead."""
        node_id = self.workers[name].node_id
        started = time.monotonic()
        wait_for(lambda: any(n["node_id"] == node_id and n["state"] == "DEAD" for n in self.list_nodes()),
                 timeout_s, f"the GCS to mark {name} dead", interval_s=0.2)
        return time.monotonic() - started

    def stop_node(self, name: str) -> None:
        node = self.workers[name]
        if node.proc is None:
            return
        # A SIGKILLed process can take more than kill_session's 30 s to be gone at a load average of
        # several hundred (seen here): try again before calling it a survivor.
        for attempt in range(3):
            try:
                kill_session(node.proc.pid, grace_s=2.0, start_ticks=node.start_ticks)
                break
            except RayHeadError:
                if attempt == 2:
                    raise
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=10)
        node.proc = None

    def stop(self) -> None:
        """Stop every process of this cluster (worker nodes first), then remove its temp dirs."""
        errors = []
        for name in list(self.workers):
            try:
                self.stop_node(name)
            except Exception as e:  # keep stopping the rest; report at the end
                errors.append(f"{name}: {e}")
        if self.head is not None:
            try:
                self.head.stop()
            except Exception as e:
                errors.append(f"head: {e}")
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise AssertionError("the Ray cluster did not stop cleanly: " + "; ".join(errors))

    def processes(self) -> dict[int, ProcInfo]:
        """Every live process of this cluster (empty once stopped)."""
        procs = dict(self.head.processes()) if self.head is not None else {}
        for node in self.workers.values():
            procs |= node.processes()
        return procs


class _NodeExited(Exception):
    pass


@contextlib.contextmanager
def local_ray_cluster(nodes: dict[str, int], **kwargs: Any) -> Iterator[LocalRayCluster]:
    cluster = LocalRayCluster(nodes=nodes, **kwargs)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def ray_actors(
    dashboard_url: str, class_name: str | None, ray_job_hex: str | None = None
) -> list[dict[str, Any]]:
    """Actors (alive or dead) as Ray's state API lists them, of ``class_name`` (None: any) and
    optionally of one Ray job only (its hex job id): class_name, node_id, pid, state, ..."""
    from ray.util.state import list_actors

    filters: list[tuple[str, str, str]] = []
    if class_name is not None:
        filters.append(("class_name", "=", class_name))
    if ray_job_hex is not None:
        filters.append(("job_id", "=", ray_job_hex))
    actors = list_actors(address=dashboard_url, filters=filters, detail=True, limit=10_000,
                         raise_on_missing_output=False)
    return [_as_dict(a) for a in actors]


def ray_job_hex(dashboard_url: str, submission_id: str) -> str:
    """The Ray job id (hex, what actors are tagged with) of a Jobs-API submission."""
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(dashboard_url).get_job_info(submission_id)
    if not info.job_id:
        raise AssertionError(f"Ray job {submission_id} has no driver job id yet ({info.status})")
    return info.job_id


def _as_dict(state: Any) -> dict[str, Any]:
    """A state-API record (a dataclass in Ray 2.60) as a dict."""
    return state if isinstance(state, dict) else dict(vars(state))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
