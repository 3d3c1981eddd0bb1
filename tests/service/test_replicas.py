"""Two service replicas on one PostgreSQL database and one Ray cluster (issue 23, item 4).

Replicas A and B are two ``rampctl serve`` processes (``fault_support.ServiceProcess``) on the same
throwaway PostgreSQL database, the same storage directory, the same public address for job
drivers (a fail-over proxy in front of both, as a load balancer would be) and the same local Ray
head (RAY_ADDRESS mode, 2 CPUs), at most two active jobs in all. Then:

1. cancel through either replica: two long jobs run; one is cancelled through each replica (through
   the replica that did not claim it whenever the claims allow), and its Ray job is STOPPED;
2. 20 tiny training jobs are submitted alternately to A and B; once A has claimed jobs that are
   running while others still wait, A is SIGKILLed (and stays down); B alone finishes everything:
   A's running jobs (their Ray jobs outlive A), whatever A had claimed, and the queue.

Checked from the database and from Ray's own job list: every job ``succeeded`` in attempt 1 and
ran as exactly one Ray job (none lost, none run twice), and which replica claimed what.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_support import local_ray_cluster
from exec_support import ADMIN_TOKEN, tiny_train_spec, wait_for
from fault_support import ServiceProcess
from sqlalchemy import create_engine, text

from service.ray_local import free_port

pytestmark = pytest.mark.slow

JOBS = 20
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def head() -> Iterator[Any]:
    # A one-node cluster with cluster_support's environment (RAY_API_SERVER_ADDRESS, Ray Train's
    # worker-group start deadline): with a plain head, while other Ray clusters ran on the machine,
    # both running jobs' Ray Train runs sat for minutes without a step.
    with local_ray_cluster({}, head_cpus=2) as cluster:
        assert cluster.head is not None
        yield cluster.head


class Failover:
    """127.0.0.1:``port`` -> the first of ``targets`` that accepts the connection: the one service
    address job drivers are given (RAMP_PUBLIC_URL), as a load balancer in front of the replicas is
    in a real deployment. Without it a driver started by a replica that then died cannot fetch its
    spec (seen: "GET .../internal/jobs/3/spec not delivered ... Connection refused")."""

    def __init__(self, targets: list[int]) -> None:
        self.targets = targets
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        for port in self.targets:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                continue
        else:
            client.close()
            return
        upstream.settimeout(None)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def replicas(
    head: Any, pg_empty_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    storage = tmp_path_factory.mktemp("storage")
    env = {
        "DATABASE_URL": pg_empty_url, "RAY_ADDRESS": head.dashboard_url,
        "RAMP_RAY_DASHBOARD_URL": head.dashboard_url, "RAMP_DISPATCH_INTERVAL_S": "0.2",
        # The limit counts every active job in the database (whichever replica claimed it): 2 fill
        # the head's 2 CPUs, so no job waits inside Ray for CPUs (Ray Train's worker-group start
        # deadline would count against it).
        "RAMP_MAX_CONCURRENT_JOBS": "2", "RAMP_LOG_LEVEL": "INFO", "RAMP_STORAGE_DIR": str(storage),
        "RAMP_RATE_LIMIT_PER_MINUTE": "0",  # the test polls far more often than a user would
    }
    ports = [free_port(), free_port()]
    balancer = Failover(ports)
    env["RAMP_PUBLIC_URL"] = f"http://127.0.0.1:{balancer.port}"
    procs = [ServiceProcess(tmp_path_factory.mktemp(f"home-{name}"), port, env, ADMIN_TOKEN)
             for name, port in zip("ab", ports, strict=True)]
    try:
        for p in procs:  # one after the other: the second finds the schema current
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()
        balancer.close()


def _claims(url: str) -> dict[int, tuple[str, str | None, int]]:
    """job id -> (status, claimed_by, attempt), straight from the database."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, status, claimed_by, attempt FROM jobs")).all()
    finally:
        engine.dispose()
    return {r.id: (r.status, r.claimed_by, r.attempt) for r in rows}


def _claimer_pid(claimed_by: str | None) -> int | None:
    # service.dispatcher.loop.default_claimer: "<host>:<pid>:<random>"
    return None if claimed_by is None else int(claimed_by.split(":")[1])


def _ray_jobs(dashboard_url: str) -> dict[int, list[Any]]:
    from ray.job_submission import JobSubmissionClient

    out: dict[int, list[Any]] = {}
    for info in JobSubmissionClient(dashboard_url).list_jobs():
        ramp_id = (info.metadata or {}).get("ramp_job_id")
        if ramp_id is not None:
            out.setdefault(int(ramp_id), []).append(info)
    return out


def test_two_replicas_share_the_work_survive_a_sigkill_and_cancel_each_others_jobs(
    head: Any, replicas: list[ServiceProcess], pg_empty_url: str
) -> None:
    a, b = replicas
    clients = [p.client() for p in replicas]
    pids = {p.proc.pid: name for p, name in zip(replicas, "AB", strict=True)}  # type: ignore[union-attr]
    started = time.monotonic()

    # --- 1. cancel through either replica
    long_spec = tiny_train_spec(epochs=200, max_steps=None, train_n=64)
    long_ids = [clients[i].post("/v1/jobs", json=long_spec | {"seed": i}).json()["id"] for i in range(2)]
    wait_for(lambda: all(_claims(pg_empty_url)[i][0] == "running" for i in long_ids), 600,
             "both long jobs to run")
    claims = _claims(pg_empty_url)
    long_claimers = {i: pids.get(_claimer_pid(claims[i][1])) for i in long_ids}
    # One cancel through each replica, crossed when each replica claimed one job; when one replica
    # claimed both, one cancel still goes through the replica that did not claim its job.
    if sorted(long_claimers.values()) == ["A", "B"]:
        cancels = {j: "B" if long_claimers[j] == "A" else "A" for j in long_ids}
    else:
        cancels = dict(zip(long_ids, "AB", strict=True))
    for job_id, via in cancels.items():
        r = clients["AB".index(via)].post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200, r.text
    wait_for(lambda: all(_claims(pg_empty_url)[i][0] == "cancelled" for i in long_ids), 300,
             "both long jobs to be cancelled")
    ray_jobs = _ray_jobs(head.dashboard_url)
    for job_id in long_ids:
        assert [info.status.value for info in ray_jobs[job_id]] == ["STOPPED"], ray_jobs[job_id]
    cancel_s = time.monotonic() - started

    # --- 2. 20 jobs alternately through A and B; SIGKILL A mid-run
    spec = tiny_train_spec(max_steps=1, train_n=32, eval_n=8)
    ids = []
    for i in range(JOBS):
        r = clients[i % 2].post("/v1/jobs", json=spec | {"seed": i}, headers={"Idempotency-Key": f"rep-{i}"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    a_pid = a.proc.pid  # type: ignore[union-attr]

    def a_running_others_waiting() -> dict[int, tuple[str, str | None, int]] | None:
        claims = _claims(pg_empty_url)
        mine = [c for i, c in claims.items() if i in ids and _claimer_pid(c[1]) == a_pid]
        waiting = [c for i, c in claims.items() if i in ids and c[0] == "queued"]
        return claims if any(c[0] == "running" for c in mine) and waiting else None

    at_kill = wait_for(a_running_others_waiting, 600, "replica A to run a job while others wait", 0.1)
    a.kill()
    killed_at = time.monotonic()
    a_had = {i: c[0] for i, c in at_kill.items() if i in ids and _claimer_pid(c[1]) == a_pid}

    wait_for(lambda: all(_claims(pg_empty_url)[i][0] in TERMINAL for i in ids), 1200, "every job to end", 0.5)
    drained_s = time.monotonic() - killed_at
    final = _claims(pg_empty_url)
    ray_jobs = _ray_jobs(head.dashboard_url)
    assert sorted(i for i in final if i not in long_ids) == sorted(ids), "a job was lost or created twice"
    bad = {i: final[i] for i in ids if final[i][0] != "succeeded" or final[i][2] != 1}
    assert not bad, f"jobs not succeeded in attempt 1: {bad}"
    runs = {i: len(ray_jobs.get(i, [])) for i in ids}
    assert all(n == 1 for n in runs.values()), f"Ray jobs per job: {runs}"
    by = Counter(pids.get(_claimer_pid(final[i][1]), "?") for i in ids)
    for c in clients:
        c.close()
    print(f"\nREPLICAS: cancel through either replica: long jobs claimed by {long_claimers}, cancelled "
          f"through {cancels}, Ray STOPPED ({cancel_s:.0f} s); {JOBS} jobs, A SIGKILLed holding "
          f"{sorted(a_had.items())}; B finished everything {drained_s:.0f} s after the kill; final claimers "
          f"{dict(by)}; all succeeded in attempt 1, one Ray job each; lost 0, run twice 0; "
          f"{time.monotonic() - started:.0f} s")

