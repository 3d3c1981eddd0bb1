"""Load: many concurrent clients submitting jobs, half of the submissions sent twice with the same
Idempotency-Key, against the real service process on PostgreSQL.

    .venv/bin/python bench/bench_load.py                 # 1000 submissions + 500 repeats, 50 clients
    .venv/bin/python bench/bench_load.py --submissions 2000 --clients 100 --json out.json

What runs:

- a throwaway PostgreSQL database (created on ``--pg-url``'s server, default
  ``RAMP_TEST_PG_URL`` or postgresql+psycopg2://postgres@127.0.0.1:5432/test; migrated; dropped at
  the end), or ``--database-url`` (a migrated database of your own; its jobs tables must be empty);
- ``rampctl serve`` as a subprocess (one uvicorn process: API + dispatcher) on a free port, with
  ``RAY_ADDRESS`` pointing at a closed port: the dispatcher runs its passes but Ray is unreachable,
  so every job stays queued (the load is the API's and the database's alone). The per-token rate
  limit is raised out of the way (its own tests are in tests/service/test_rate_limit.py);
- ``--tenants`` API tokens (one owner each) and ``--clients`` concurrent HTTP clients (one
  keep-alive connection each) taking requests from one shared queue: ``--submissions`` distinct
  job specs, each with its own Idempotency-Key, and a repeat of every second one (same key, same
  body, same tenant). Half of the repeats are queued right behind their original, so two clients
  send them at the same time (the race the unique key constraint arbitrates); the other half come
  later (a client retrying after a lost answer).

Checked afterwards, from the responses and from the database: every request answered 201 (first
sight of a key) or 200 (a repeat); exactly one 201 per key; every response for a key names the same
job; the jobs table holds exactly one job per key, with that key's spec and tenant; no 5xx. Printed:
requests, clients, p50 / p99 / max latency, throughput, 5xx, duplicates, lost.

``run_load`` is also what tests/service/test_load.py runs, CI-sized.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.pg import PG_BASE_URL, throwaway_database  # noqa: E402
from service.ray_local import free_port  # noqa: E402

ADMIN_TOKEN = "ramp_load-admin-token-0123456789abcdefghijkl"
SPEC = {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "epochs": 1, "max_steps": 3, "train_n": 64,
        "batch_size": 32, "eval_n": 16, "monitor_n": 0, "checks_n": 0}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------------- database


@contextlib.contextmanager
def throwaway_pg(base_url: str = PG_BASE_URL) -> Iterator[str]:
    """A new, migrated PostgreSQL database on ``base_url``'s server; dropped afterwards."""
    from service.db import migrate

    with throwaway_database(base_url, "ramp_load") as url:
        migrate.upgrade(url)
        yield url


def create_tenant_tokens(database_url: str, tenants: int) -> list[str]:
    """One API token per tenant (owner ``tenant-<i>``), registered directly in the database."""
    from service.auth import tokens
    from service.core.security import generate_token
    from service.db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    out = []
    try:
        with make_session_factory(engine)() as session:
            for i in range(tenants):
                token = generate_token()
                tokens.create_api_token(session, f"tenant-{i}", token)
                out.append(token)
    finally:
        engine.dispose()
    return out


def stored_jobs(database_url: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(every job row: id, owner, seed; idempotency key -> job id) as the database holds them."""
    from sqlalchemy import text

    from service.db.session import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT jobs.id, principals.name AS owner, jobs.spec FROM jobs "
                                     "LEFT JOIN principals ON principals.id = jobs.owner_id"))
            jobs = [{"id": r.id, "owner": r.owner, "seed": (r.spec or {}).get("seed")} for r in rows]
            keys = {r.key: r.job_id for r in conn.execute(text("SELECT key, job_id FROM idempotency_keys"))}
    finally:
        engine.dispose()
    return jobs, keys


# ---------------------------------------------------------------------------------- service


def service_command() -> list[str]:
    """How to run ``rampctl serve`` with this interpreter (the console script when installed)."""
    script = Path(sys.executable).with_name("rampctl")
    if script.is_file():
        return [str(script), "serve"]
    return [sys.executable, "-c", "from rampctl.main import app; app()", "serve"]


@contextlib.contextmanager
def serve_subprocess(database_url: str, home: Path, **env_extra: str) -> Iterator[str]:
    """``rampctl serve`` in a subprocess on a free port, Ray unreachable; yields its base URL.
    Stopped with SIGTERM (SIGKILL after 30 s); its log is ``home/service.log``."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    dead_ray = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = os.environ | {
        "RAMP_HOME": str(home), "DATABASE_URL": database_url, "RAMP_PORT": str(port),
        "RAMP_PUBLIC_URL": f"http://127.0.0.1:{port}", "RAY_ADDRESS": dead_ray,
        "RAMP_RAY_DASHBOARD_URL": dead_ray, "RAMP_ADMIN_TOKEN": ADMIN_TOKEN, "RAMP_LOG_LEVEL": "WARNING",
        "RAMP_RATE_LIMIT_PER_MINUTE": "1000000", "RAMP_DISPATCH_INTERVAL_S": "1",
    } | env_extra
    url = f"http://127.0.0.1:{port}"
    log_path = home / "service.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(service_command(), env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=str(ROOT), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited ({proc.returncode}) during start-up:\n"
                                   + log_path.read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not answer /healthz within 120 s:\n"
                                   + log_path.read_text()[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ---------------------------------------------------------------------------------- the load


@dataclass
class Request:
    key: str
    tenant: int
    seed: int
    repeat: bool


@dataclass
class Outcome:
    request: Request
    status: int
    job_id: int | None
    seconds: float
    detail: str = ""


@dataclass
class LoadResult:
    submissions: int
    repeats: int
    clients: int
    tenants: int
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def plan(submissions: int, tenants: int, seed: int = 0) -> list[Request]:
    """``submissions`` distinct requests plus a repeat of every second one: half of the repeats right
    behind their original (sent concurrently), half at a random later position (a late retry)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    originals = [Request(f"load-{run}-{i}", i % tenants, i, False) for i in range(submissions)]
    order: list[Request] = []
    late: list[Request] = []
    for i, req in enumerate(originals):
        order.append(req)
        if i % 2 == 0:
            again = Request(req.key, req.tenant, req.seed, True)
            if i % 4 == 0:
                order.append(again)  # raced: the next free client takes it at once
            else:
                late.append(again)
    for again in late:
        first = next(j for j, r in enumerate(order) if r.key == again.key)
        order.insert(rng.randint(min(first + 2, len(order)), len(order)), again)
    return order


async def _drive(url: str, tokens: list[str], requests: list[Request], clients: int,
                 timeout_s: float) -> tuple[list[Outcome], float]:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for req in requests:
        queue.put_nowait(req)
    outcomes: list[Outcome] = []

    async def client() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as c:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                headers = {"Authorization": f"Bearer {tokens[req.tenant]}", "Idempotency-Key": req.key}
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/jobs", json=SPEC | {"seed": req.seed}, headers=headers)
                except httpx.HTTPError as e:
                    error = f"{type(e).__name__}: {e}"
                    outcomes.append(Outcome(req, 0, None, time.perf_counter() - t0, error))
                    continue
                elapsed = time.perf_counter() - t0
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                job_id = body.get("id") if r.status_code in (200, 201) else None
                detail = "" if r.status_code in (200, 201) else str(body.get("detail", r.text))[:300]
                outcomes.append(Outcome(req, r.status_code, job_id, elapsed, detail))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes, time.perf_counter() - started


def run_load(url: str, database_url: str, tokens: list[str], *, submissions: int, clients: int,
             timeout_s: float = 60.0, seed: int = 0) -> LoadResult:
    """Send the plan's requests from ``clients`` concurrent clients, then check the responses and
    the database. ``tokens``: one per tenant. The database must hold no job before the run."""
    requests = plan(submissions, len(tokens), seed)
    load_before = os.getloadavg()[0]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=30) as c:
        c.get("/v1/jobs", params={"limit": 1}).raise_for_status()  # warm-up: imports, first connection
    outcomes, wall = asyncio.run(_drive(url, tokens, requests, clients, timeout_s))
    result = LoadResult(submissions=submissions, repeats=len(requests) - submissions, clients=clients,
                        tenants=len(tokens), outcomes=outcomes, wall_s=wall)
    check(result, database_url)
    result.figures["loadavg_1m"] = load_before
    result.figures["cpus"] = os.cpu_count()
    return result


def check(result: LoadResult, database_url: str) -> None:
    """Fill ``result.problems`` (empty when every check holds) and ``result.figures``."""
    problems = result.problems
    statuses = Counter(o.status for o in result.outcomes)
    by_key: dict[str, list[Outcome]] = defaultdict(list)
    for o in result.outcomes:
        by_key[o.request.key].append(o)
    for status, n in sorted(statuses.items()):
        if status not in (200, 201):
            sample = next(o for o in result.outcomes if o.status == status)
            problems.append(f"{n} requests answered {status or 'no response'}; e.g. {sample.detail!r}")
    duplicated_keys = 0
    for key, outs in by_key.items():
        created = [o for o in outs if o.status == 201]
        ids = {o.job_id for o in outs if o.status in (200, 201)}
        if len(created) > 1 or len(ids) > 1:
            duplicated_keys += 1
            problems.append(f"key {key}: {len(created)} creations, job ids {sorted(ids)}")
        elif ids and not created:
            problems.append(f"key {key}: only replays (200), no creation (201)")
    jobs, keys = stored_jobs(database_url)
    seed_of = {o.request.key: o.request.seed for o in result.outcomes}
    tenant_of = {o.request.key: o.request.tenant for o in result.outcomes}
    answered: dict[str, int | None] = {}
    for key, outs in by_key.items():
        accepted = [o for o in outs if o.status in (200, 201)]
        if accepted:
            answered[key] = accepted[0].job_id
    rows = {j["id"]: j for j in jobs}
    lost = [key for key, job_id in answered.items() if job_id not in rows or keys.get(key) != job_id]
    if lost:
        problems.append(f"{len(lost)} accepted submissions have no (or another) job stored: {lost[:5]}")
    for key, job_id in answered.items():
        row = rows.get(job_id)
        if row is not None and (row["seed"] != seed_of[key] or row["owner"] != f"tenant-{tenant_of[key]}"):
            problems.append(f"job {job_id} of key {key} holds another submission: {row}")
    extra_jobs = len(jobs) - len(set(keys.values()))
    if extra_jobs:
        problems.append(f"{extra_jobs} jobs in the database belong to no Idempotency-Key (duplicates)")
    if len(jobs) != len(by_key):
        problems.append(f"{len(jobs)} jobs stored for {len(by_key)} distinct submissions")
    latencies = [o.seconds for o in result.outcomes if o.status]
    result.figures = {
        "requests": len(result.outcomes), "submissions": result.submissions, "repeats": result.repeats,
        "clients": result.clients, "tenants": result.tenants,
        "created_201": statuses.get(201, 0), "replayed_200": statuses.get(200, 0),
        "errors_5xx": sum(n for s, n in statuses.items() if s >= 500),
        "other_errors": sum(n for s, n in statuses.items() if s not in (200, 201) and s < 500),
        "jobs_stored": len(jobs), "duplicates": duplicated_keys + max(0, extra_jobs), "lost": len(lost),
        "p50_ms": 1000 * percentile(latencies, 50) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "max_ms": 1000 * max(latencies) if latencies else None,
        "wall_s": result.wall_s, "throughput_per_s": len(result.outcomes) / result.wall_s,
    }


def summary(figures: dict[str, Any]) -> str:
    f = figures
    return (f"{f['requests']} requests ({f['submissions']} submissions + {f['repeats']} repeats with the "
            f"same Idempotency-Key) from {f['clients']} clients, {f['tenants']} tenants: "
            f"{f['created_201']} x 201, {f['replayed_200']} x 200, 5xx {f['errors_5xx']}, "
            f"other errors {f['other_errors']}; jobs stored {f['jobs_stored']}, "
            f"duplicates {f['duplicates']}, "
            f"lost {f['lost']}; latency p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, "
            f"max {f['max_ms']:.0f} ms; {f['throughput_per_s']:.0f} req/s over {f['wall_s']:.1f} s "
            f"({f.get('cpus')} CPUs, load average {f.get('loadavg_1m', 0):.1f} at the start)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--submissions", type=int, default=1000, help="distinct submissions (half sent twice)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--tenants", type=int, default=10)
    p.add_argument("--pg-url", default=PG_BASE_URL, help="server for the throwaway database")
    p.add_argument("--database-url", default=None, help="use this (migrated, empty) database instead")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="ramp-bench-load-"))
    try:
        with contextlib.ExitStack() as stack:
            database_url = args.database_url or stack.enter_context(throwaway_pg(args.pg_url))
            tokens = create_tenant_tokens(database_url, args.tenants)
            url = stack.enter_context(serve_subprocess(database_url, home))
            result = run_load(url, database_url, tokens, submissions=args.submissions, clients=args.clients)
        print(summary(result.figures))
        for problem in result.problems[:20]:
            print(f"PROBLEM: {problem}")
        if args.json:
            args.json.write_text(json.dumps(result.figures, indent=2) + "\n")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
