"""Service benchmark: submit latency under concurrent clients, and submit-to-running overhead.

    python bench/bench_service.py [--clients 8] [--jobs-per-client 25] [--runs 5] [--json out.json]

1. Submit latency: a live uvicorn server (API only, dispatcher off, so jobs stay queued) and
   ``--clients`` threads each POSTing ``--jobs-per-client`` job specs; p50 / p99 / max of the
   request latency and the throughput. SQLite by default, ``--database-url`` for PostgreSQL.
2. Submit -> running: a local Ray head (started here, stopped here -- only its own processes).
   Raw Ray: ``JobSubmissionClient.submit_job`` until the job's status is RUNNING. Service: POST
   /v1/jobs until GET /v1/jobs/{id} says ``running`` (the dispatcher claims, creates the job token,
   submits the driver and maps Ray's RUNNING). Each service job is cancelled once running.
   The overhead ratio is median(service) / median(raw).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.core.config import Settings  # noqa: E402
from service.main import create_app  # noqa: E402
from service.ray_local import LocalRayHead, free_port  # noqa: E402

TERMINAL = ("cancelled", "succeeded", "failed")
TOKEN = "ramp_bench-admin-token-0123456789abcdefghij"
SPEC = {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "epochs": 1, "max_steps": 3, "train_n": 64,
        "batch_size": 32, "eval_n": 16, "monitor_n": 0}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@contextlib.contextmanager
def serve(settings: Settings, *, dispatcher: bool) -> Iterator[httpx.Client]:
    import uvicorn

    app = create_app(settings, start_dispatcher=dispatcher)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}",
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(60)


def make_settings(home: Path, database_url: str | None, **extra: Any) -> Settings:
    port = free_port()
    return Settings(home=home, database_url=database_url or f"sqlite:///{home / 'bench.db'}", port=port,
                    public_url=f"http://127.0.0.1:{port}", admin_token=TOKEN, log_level="WARNING", **extra)


def bench_submit(home: Path, database_url: str | None, clients: int, per_client: int) -> dict[str, Any]:
    settings = make_settings(home / "submit", database_url)
    with serve(settings, dispatcher=False) as client:
        client.post("/v1/jobs", json=SPEC).raise_for_status()  # warm-up (imports, first connection)
        latencies: list[float] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            with httpx.Client(base_url=str(client.base_url), headers=dict(client.headers), timeout=60) as c:
                for j in range(per_client):
                    t0 = time.perf_counter()
                    r = c.post("/v1/jobs", json=SPEC | {"seed": i * per_client + j})
                    elapsed = time.perf_counter() - t0
                    r.raise_for_status()
                    with lock:
                        latencies.append(elapsed)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, range(clients)))
        wall = time.perf_counter() - started
    return {
        "database": "postgresql" if database_url and "postgres" in database_url else "sqlite",
        "clients": clients, "requests": len(latencies),
        "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
        "max_ms": 1000 * max(latencies), "throughput_per_s": len(latencies) / wall,
    }


def bench_running(home: Path, database_url: str | None, runs: int, interval_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="rampbench-", dir="/tmp"))
    head = LocalRayHead(tmp_dir=tmp, num_cpus=2, dashboard_port=0)
    try:
        t0 = time.perf_counter()
        url = head.start()
        head_start = time.perf_counter() - t0
        from ray.job_submission import JobSubmissionClient

        ray = JobSubmissionClient(url)
        raw: list[float] = []
        raw_submit: list[float] = []
        for i in range(runs + 1):  # the first job on a fresh head is slower (agent warm-up): dropped
            t0 = time.perf_counter()
            # Shaped like the service's submissions: env vars in the runtime env, one CPU reserved.
            sub = ray.submit_job(entrypoint=f"{sys.executable} -c 'import time; time.sleep(30)'",
                                 submission_id=f"bench-raw-{i}", entrypoint_num_cpus=1,
                                 runtime_env={"env_vars": {"RAMP_BENCH": str(i)}})
            submitted = time.perf_counter() - t0
            while str(getattr(ray.get_job_status(sub), "value", "")) != "RUNNING":
                time.sleep(0.02)
            if i:
                raw.append(time.perf_counter() - t0)
                raw_submit.append(submitted)
            ray.stop_job(sub)
            while ray.get_job_status(sub).value not in ("STOPPED", "FAILED", "SUCCEEDED"):
                time.sleep(0.05)

        settings = make_settings(home / "running", database_url, dispatch_interval_s=interval_s,
                                 max_concurrent_jobs=1)
        settings.ray_address = settings.ray_dashboard_url = url
        service: list[float] = []
        claim: list[float] = []
        to_running: list[float] = []
        cancel: list[float] = []
        with serve(settings, dispatcher=True) as client:
            for _ in range(runs):
                t0 = time.perf_counter()
                job_id = client.post("/v1/jobs", json=SPEC).json()["id"]
                while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] != "running":
                    time.sleep(0.02)
                service.append(time.perf_counter() - t0)
                t = {k: datetime.fromisoformat(v) for k, v in job["timings"].items() if v}
                claim.append((t["dispatching_at"] - t["queued_at"]).total_seconds())
                to_running.append((t["running_at"] - t["dispatching_at"]).total_seconds())
                t1 = time.perf_counter()
                client.post(f"/v1/jobs/{job_id}/cancel")
                while client.get(f"/v1/jobs/{job_id}").json()["status"] not in TERMINAL:
                    time.sleep(0.05)
                cancel.append(time.perf_counter() - t1)
    finally:
        head.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med_raw, med_service = statistics.median(raw), statistics.median(service)
    return {
        "runs": runs, "dispatch_interval_s": interval_s, "ray_head_start_s": head_start,
        "raw_ray_submit_ms_median": 1000 * statistics.median(raw_submit),
        "raw_ray_submit_to_running_s": {"median": med_raw, "min": min(raw), "max": max(raw)},
        "service_submit_to_running_s": {"median": med_service, "min": min(service), "max": max(service)},
        "service_queued_to_dispatching_s_median": statistics.median(claim),
        "service_dispatching_to_running_s_median": statistics.median(to_running),
        "service_cancel_to_cancelled_s_median": statistics.median(cancel),
        "overhead_ratio": med_service / med_raw,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--jobs-per-client", type=int, default=25)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dispatch-interval", type=float, default=1.0, help="the service's dispatch_interval_s")
    p.add_argument("--database-url", default=None, help="default: a SQLite file")
    p.add_argument("--skip-ray", action="store_true", help="only the submit-latency part")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="ramp-bench-home-"))
    try:
        submit = bench_submit(home, args.database_url, args.clients, args.jobs_per_client)
        out: dict[str, Any] = {"submit": submit}
        s = out["submit"]
        print(f"submit latency ({s['database']}, {s['clients']} clients, {s['requests']} requests): "
              f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms, "
              f"{s['throughput_per_s']:.0f} req/s")
        if not args.skip_ray:
            out["running"] = r = bench_running(home, args.database_url, args.runs, args.dispatch_interval)
            print(f"Ray head start: {r['ray_head_start_s']:.1f} s; raw Ray submit call: "
                  f"{r['raw_ray_submit_ms_median']:.1f} ms (median)")
            raw = r["raw_ray_submit_to_running_s"]["median"]
            print(f"submit -> RUNNING, raw Ray Jobs API: median {raw:.2f} s")
            print(f"submit -> running, service (dispatch interval {r['dispatch_interval_s']} s): "
                  f"median {r['service_submit_to_running_s']['median']:.2f} s")
            print(f"  of which queued -> dispatching {r['service_queued_to_dispatching_s_median']:.2f} s, "
                  f"dispatching -> running {r['service_dispatching_to_running_s_median']:.2f} s")
            print(f"overhead ratio (service / raw Ray): {r['overhead_ratio']:.2f}")
            cancel = r["service_cancel_to_cancelled_s_median"]
            print(f"cancel -> cancelled (running job): median {cancel:.2f} s")
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
