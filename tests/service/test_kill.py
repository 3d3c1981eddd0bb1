"""Kill: the service process is SIGKILLed three times while jobs run, and restarted each time.

The service is ``rampctl serve`` as a real subprocess (fault_support.ServiceProcess) on
PostgreSQL, against a local Ray head started by this module (RAY_ADDRESS mode: Ray jobs outlive
the service, as on a cluster). Four tiny training jobs (2 epochs), at most two at a time, and three
kills, each when its condition holds (never after a fixed delay):

1. right after the submissions, as soon as the dispatcher has claimed a job (claim -> submit ->
   Ray's RUNNING in flight); after the restart the client re-sends its four submissions with their
   Idempotency-Keys, as a client that never saw the answers would;
2. while a job is training (its first epoch's metrics stored); the service stays down until a
   driver has spooled events it could not deliver;
3. once a job has succeeded while others are still queued or running.

Then every job must end ``succeeded`` in its first attempt with its metrics, both epochs' history,
every event of its driver exactly once (seq 0..n-1, no gap, no repeat), its artifacts (checkpoint,
result), and exactly one Ray job: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from exec_support import ADMIN_TOKEN, ray_head, tiny_train_spec, wait_for
from fault_support import service_process

from service.ray_local import free_port

pytestmark = pytest.mark.slow

JOBS = 4
KILLS = 3
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def head() -> Iterator[Any]:
    with ray_head() as h:
        yield h


def _jobs(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get("/v1/jobs", params={"limit": 200})
    r.raise_for_status()
    return r.json()["jobs"]


def _events(client: httpx.Client, job_id: int, type_: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 1000} | ({"type": type_} if type_ else {}) | (
            {"after": after} if after is not None else {})
        r = client.get(f"/v1/jobs/{job_id}/events", params=params)
        r.raise_for_status()
        page = r.json()
        out += page["events"]
        after = page["next_after"]
        if after is None or not page["events"]:
            return out


def _spooled(storage: Path) -> int:
    """Events the drivers have written to their spools so far (delivered or not)."""
    total = 0
    for spool in (storage / "spool" / "jobs").glob("*/attempt-*.jsonl"):
        with contextlib.suppress(OSError):  # being written
            total += sum(1 for line in spool.read_text().splitlines() if line.strip())
    return total


def test_jobs_survive_three_sigkills_of_the_service(
    head: Any, pg_empty_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("home")
    storage = home / "artifacts"
    env = {
        "DATABASE_URL": pg_empty_url, "RAY_ADDRESS": head.dashboard_url,
        "RAMP_RAY_DASHBOARD_URL": head.dashboard_url, "RAMP_DISPATCH_INTERVAL_S": "0.2",
        "RAMP_MAX_CONCURRENT_JOBS": "2", "RAMP_LOG_LEVEL": "INFO", "RAMP_STORAGE_DIR": str(storage),
        "RAMP_RATE_LIMIT_PER_MINUTE": "0",  # the test polls far more often than a user would
    }
    specs = [tiny_train_spec(epochs=2, max_steps=None, train_n=192, seed=i) for i in range(JOBS)]
    keys = [f"kill-test-{i}" for i in range(JOBS)]
    started = time.monotonic()
    figures: dict[str, Any] = {"kill_moments": [], "restart_s": [], "down_s": []}
    killed_at = 0.0
    with service_process(home, free_port(), env, ADMIN_TOKEN) as service:
        figures["restart_s"].append(service.start())
        client = service.client()

        def submit_all() -> list[int]:
            ids = []
            for spec, key in zip(specs, keys, strict=True):
                r = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
                assert r.status_code in (200, 201), r.text
                ids.append(r.json()["id"])
            return ids

        def crash(jobs: list[dict[str, Any]], what: str) -> None:
            """SIGKILL now; ``jobs``: the list that met the condition, recorded with ``what``."""
            nonlocal killed_at
            service.kill()
            killed_at = time.monotonic()
            states = ", ".join(f"{j['id']} {j['status']}" for j in sorted(jobs, key=lambda j: j["id"]))
            figures["kill_moments"].append(f"{what} ({states})")

        def restart() -> None:
            figures["restart_s"].append(service.start())
            figures["down_s"].append(time.monotonic() - killed_at)

        # --- kill 1: a job claimed, its submission to Ray in flight.
        ids = submit_all()
        def claimed() -> list[dict[str, Any]] | None:
            jobs = _jobs(client)
            return jobs if any(j["status"] != "queued" for j in jobs) else None

        crash(wait_for(claimed, 120, "a job to be claimed", interval_s=0.02), "a job claimed")
        restart()
        assert submit_all() == ids  # the client's retries of its submissions: the same jobs

        # --- kill 2: a job mid-training; stay down until a driver spools what it cannot deliver.
        def training() -> list[dict[str, Any]] | None:
            if not any(_events(client, i, "metrics") for i in ids):
                return None
            jobs = _jobs(client)
            return jobs if any(j["status"] == "running" for j in jobs) else None

        jobs = wait_for(training, 300, "a job with its first epoch's metrics, still running")
        before = _spooled(storage)
        crash(jobs, "mid-training")
        wait_for(lambda: _spooled(storage) > before, 120, "a driver to spool events during the outage")
        restart()

        # --- kill 3: a job finished, others still to go.
        def one_done_more_to_go() -> list[dict[str, Any]] | None:
            jobs = _jobs(client)
            statuses = [j["status"] for j in jobs]
            return jobs if "succeeded" in statuses and any(s not in TERMINAL for s in statuses) else None

        jobs = wait_for(one_done_more_to_go, 600, "a job to succeed, others pending", interval_s=0.05)
        crash(jobs, "a job done, others pending")
        restart()

        # --- the end: every job terminal.
        wait_for(lambda: all(j["status"] in TERMINAL for j in _jobs(client)), 900, "every job to end", 0.5)
        figures["wall_s"] = time.monotonic() - started
        assert service.kills == KILLS

        jobs = {j["id"]: j for j in _jobs(client)}
        assert sorted(jobs) == sorted(ids), "a job was lost or created twice"
        ray_jobs = _ray_jobs_by_ramp_id(head.dashboard_url)
        events_total = late = 0
        for job_id in ids:
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "succeeded", job
            assert job["attempt"] == 1, job  # no attempt failed because of a kill
            assert {"clean", "linf", "l2", "l1", "union"} <= set(job["metrics"]), job["metrics"]
            history = client.get(f"/v1/jobs/{job_id}/metrics").json()["history"]
            assert [h["epoch"] for h in history] == [1, 2], history
            evs = _events(client, job_id)
            reported = [e for e in evs if e["seq"] is not None]
            assert [e["seq"] for e in reported] == list(range(len(reported))), "an event lost or stored twice"
            assert len({e["id"] for e in evs}) == len(evs)
            ends = [e for e in evs if e["type"] == "status" and e["data"].get("to") == "succeeded"]
            assert len(ends) == 1, ends
            events_total += len(reported)
            # Emitted while the service was down, stored after a restart.
            late += sum(1 for e in reported if "ts" in e["data"]
                        and datetime.fromisoformat(e["created_at"]).timestamp() - e["data"]["ts"] > 1.0)
            names = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
            assert "result.json" in names and any(n.startswith("checkpoint/") for n in names), names
            result = client.get(f"/v1/jobs/{job_id}/artifacts/result.json").json()
            assert result["status"] == "succeeded" and result["attempt"] == 1, result
            assert ray_jobs[job_id] == 1, f"job {job_id} ran as {ray_jobs[job_id]} Ray jobs"
        figures["events"], figures["late"] = events_total, late
        assert late > 0, "no event was emitted during an outage: the kills missed the training"
        client.close()
    print(f"\nKILL: {JOBS} jobs, {KILLS} SIGKILLs of the service ({'; '.join(figures['kill_moments'])}), "
          f"down {', '.join(f'{s:.1f}' for s in figures['down_s'])} s (kill to answering again); "
          "all succeeded in attempt 1, "
          f"{figures['events']} driver events each stored once ({figures['late']} emitted during an outage), "
          f"one Ray job per job; lost 0, duplicated 0; {figures['wall_s']:.0f} s")


def _ray_jobs_by_ramp_id(dashboard_url: str) -> Counter[int]:
    """How many Ray jobs the head ran for each service job (from the submission metadata)."""
    from ray.job_submission import JobSubmissionClient

    counts: Counter[int] = Counter()
    for info in JobSubmissionClient(dashboard_url).list_jobs():
        ramp_id = (info.metadata or {}).get("ramp_job_id")
        if ramp_id is not None:
            counts[int(ramp_id)] += 1
    return counts
