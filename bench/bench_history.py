"""Costs that grow with stored history: each endpoint's latency with 1k and with 50k stored jobs,
and the ratio (target: every ratio <= 1.5; issue 23).

    .venv/bin/python bench/bench_history.py                      # SQLite, 1k and 50k jobs
    .venv/bin/python bench/bench_history.py --postgres           # also on a throwaway PostgreSQL db
    .venv/bin/python bench/bench_history.py --sizes 1000 10000 50000 --json out.json
    .venv/bin/python bench/bench_history.py --baseline-indexes   # the schema before migration 0005

What runs: for each size, a fresh migrated database filled with that many finished jobs (about 2.5 KB
of spec + result each, like real ones; 90 % of them the admin's, 10 % a small tenant's, mostly
succeeded, a few failed with retries left, 30 queued at the newest ids), one job with 3000 log
lines, then the app in-process (no dispatcher, no Ray) behind TestClient. Each endpoint is timed
``--reps`` times after warm-ups. PostgreSQL's statistics are refreshed
(ANALYZE) after the fill, as autovacuum would; SQLite gets none, as a default deployment has none.

Measured: the listings, pages of ``LIMIT`` jobs (full pages at either size: a cost that grows with
the page's fill is not one that grows with history) -- an admin's first page, a small tenant's page
filtered by status / kind / method, an admin's filtered by kind + method, the jobs page's live
fragment), ``/metrics``, ``/readyz``, one claim pass (``claim_queued_jobs``, a queued job at the
newest id), the start-up reconciliation's query (``retry_due_ids``) and a job's page
(``/ui/jobs/{id}``, 3000 log lines). The sizes' requests alternate one by one, so a shared
machine's load weighs on both alike; the median and the minimum are printed (the minimum is the
closest to the work itself when the machine is busy).
``--baseline-indexes`` drops 0005's indexes after migrating (and restores ``ix_jobs_status``), to
see what they buy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.pg import PG_BASE_URL, throwaway_database  # noqa: E402

TARGET_RATIO = 1.5
LIMIT = 20
TS = "2026-01-01 00:00:00"
SPEC = {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "model": "small-cnn", "epochs": 3,
        "max_steps": 200, "seed": 0, "batch_size": 128, "lr": 0.01,
        "epsilons": {"linf": 0.3, "l2": 2.0, "l1": 10.0},
        "params": {"ramp.lambda": 5.0, "gp.beta": 0.5, "notes": "x" * 600},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": False}, "max_retries": 0}
RESULT = {"clean": 0.97, "linf": 0.81, "l2": 0.62, "l1": 0.55, "union": 0.5, "n": 1000,
          "suite": "standard", "curves": {k: [[i / 20, 0.9 - i / 40] for i in range(20)]
                                          for k in ("linf", "l2", "l1")},
          "checks": {"warnings": [], "inconclusive": []}}
BASELINE_DROP = ["ix_jobs_owner_id_status_id", "ix_jobs_owner_id_kind_id", "ix_jobs_owner_id_method_id",
                 "ix_jobs_kind_method_id", "ix_jobs_status_id"]


def _fill(url: str, n: int, small_owner: int, admin_owner: int) -> int:
    """``n`` stored jobs; returns the id of the one with 3000 log lines."""
    from sqlalchemy import insert

    from service.db.models import Job, JobEvent
    from service.db.session import make_engine

    statuses = ["succeeded"] * 8 + ["failed", "cancelled"]
    engine = make_engine(url)
    rows = []
    due = lambda i: n - 300 < i and i % 10 == 8  # noqa: E731
    for i in range(1, n + 1):
        queued = i > n - 30
        rows.append({
            "kind": "sweep" if i % 3 == 1 else "train", "method": ("ramp", "eat", "msd")[i % 3],
            "spec": SPEC, "status": "queued" if queued else statuses[i % len(statuses)],
            # Failed jobs have used their retries (a due retry is taken within a pass), but for the
            # few newest: what the start-up reconciliation finds after an outage.
            "attempt": 2 if i % 40 == 8 else 1, "max_retries": 1 if i % 40 == 8 or due(i) else 0,
            "result": None if queued else RESULT,
            "owner_id": small_owner if i % 10 == 0 else admin_owner,
        })
    with engine.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(insert(Job), rows[start:start + 5000])
        big = int(conn.exec_driver_sql("SELECT max(id) FROM jobs WHERE status = 'succeeded'").scalar())
        conn.execute(insert(JobEvent), [
            {"job_id": big, "attempt": 1, "seq": k, "type": "log",
             "data": {"message": f"step {k}: loss 0.{k % 97:02d}", "level": "info"}} for k in range(3000)])
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return big


def _baseline_indexes(url: str) -> None:
    from service.db.session import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        for name in BASELINE_DROP:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("CREATE INDEX ix_jobs_status ON jobs (status)")
    engine.dispose()


@contextlib.contextmanager
def _database(kind: str, pg_url: str, tmp: Path, n: int) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'history-{n}.db'}"
        return
    with throwaway_database(pg_url, "ramp_hist") as url:
        yield url


@contextlib.contextmanager
def prepared(kind: str, n: int, *, pg_url: str, baseline: bool) -> Iterator[dict[str, Callable[[], None]]]:
    """A filled database of ``n`` jobs and the app on it; yields each endpoint's call."""
    from fastapi.testclient import TestClient

    from service.auth import tokens
    from service.core.config import Settings
    from service.core.security import generate_token
    from service.db import migrate
    from service.db.session import make_engine, make_session_factory
    from service.jobs import store, transitions
    from service.main import create_app

    with tempfile.TemporaryDirectory(prefix="ramp-hist-") as tmp_dir, \
            _database(kind, pg_url, Path(tmp_dir), n) as url:
        tmp = Path(tmp_dir)
        migrate.upgrade(url)
        if baseline:
            _baseline_indexes(url)
        settings = Settings(home=tmp / "home", database_url=url, ray_address=None, log_level="WARNING",
                            rate_limit_per_minute=0, poll_rate_limit_per_minute=0)
        app = create_app(settings, start_dispatcher=False)
        with TestClient(app) as client:
            admin = {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}
            small_plain = generate_token()
            with app.state.session_factory() as s:
                small = tokens.create_api_token(s, "small-tenant", small_plain)
                admin_owner = tokens.verify_api_token(s, admin["Authorization"][7:]).principal_id
                small_owner = small.principal_id
            tenant = {"Authorization": f"Bearer {small_plain}"}
            big = _fill(url, n, small_owner, admin_owner)
            engine = make_engine(url)
            sessions = make_session_factory(engine)

            def get(path: str, headers: dict[str, str], **params: Any) -> Callable[[], None]:
                if path == "/v1/jobs":
                    params["limit"] = LIMIT
                def call() -> None:
                    r = client.get(path, headers=headers, params=params)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                return call

            def claim() -> None:
                with sessions() as s:
                    jobs = transitions.claim_queued_jobs(s, limit=1, claimer="bench")
                    assert len(jobs) == 1
                    transitions.transition(s, jobs[0].id, "queued")  # back: the next pass finds it again

            def reconcile_query() -> None:
                with sessions() as s:
                    assert store.retry_due_ids(s)

            cases: dict[str, Callable[[], None]] = {
                "GET /v1/jobs (admin, first page)": get("/v1/jobs", admin),
                "GET /v1/jobs?status=succeeded (small tenant)": get("/v1/jobs", tenant, status="succeeded"),
                "GET /v1/jobs?kind=sweep (small tenant)": get("/v1/jobs", tenant, kind="sweep"),
                "GET /v1/jobs?method=eat (small tenant)": get("/v1/jobs", tenant, method="eat"),
                "GET /v1/jobs?kind=train&method=msd (admin)":
                    get("/v1/jobs", admin, kind="train", method="msd"),
                "GET /ui/fragments/jobs?status=succeeded (small tenant)":
                    get("/ui/fragments/jobs", tenant, status="succeeded"),
                "GET /metrics": get("/metrics", {}),
                "GET /readyz": get("/readyz", {}),
                "claim pass (PostgreSQL: FOR UPDATE SKIP LOCKED)": claim,
                "start-up reconcile query": reconcile_query,
                "GET /ui/jobs/{id} (3000 log lines)": get(f"/ui/jobs/{big}", admin),
            }
            try:
                yield cases
            finally:
                engine.dispose()


def measure(kind: str, sizes: list[int], *, reps: int, pg_url: str, baseline: bool,
            warmup: int = 3) -> dict[int, dict[str, tuple[float, float]]]:
    """{size: {endpoint: (median ms, min ms)}}. The sizes' calls alternate, request by request, so
    the load of a shared machine weighs on every size alike (the ratios are what matters)."""
    with contextlib.ExitStack() as stack:
        apps = {n: stack.enter_context(prepared(kind, n, pg_url=pg_url, baseline=baseline)) for n in sizes}
        times: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
        for name in apps[sizes[0]]:
            for rep in range(warmup + reps):
                for n in sizes:
                    started = time.perf_counter()
                    apps[n][name]()
                    if rep >= warmup:
                        times[n].setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return {n: {name: (statistics.median(t), min(t)) for name, t in times[n].items()} for n in sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 50000])
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL database")
    parser.add_argument("--only-postgres", action="store_true")
    parser.add_argument("--pg-url", default=PG_BASE_URL)
    parser.add_argument("--baseline-indexes", action="store_true", help="without migration 0005's indexes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    kinds = ["postgresql"] if args.only_postgres else ["sqlite"] + (["postgresql"] if args.postgres else [])
    report: dict[str, Any] = {}
    worst = 0.0
    for kind in kinds:
        results = measure(kind, args.sizes, reps=args.reps, pg_url=args.pg_url,
                          baseline=args.baseline_indexes)
        lo, hi = min(args.sizes), max(args.sizes)
        print(f"\n{kind}{' (baseline indexes)' if args.baseline_indexes else ''}: ms over {args.reps} "
              f"requests, median / min at each size; ratios {hi} / {lo} of the median and of the min")
        print(f"{'endpoint':56s}" + "".join(f"{n:>16d}" for n in args.sizes) + f"{'med':>6s}{'min':>6s}")
        for name in results[lo]:
            med, low = (results[hi][name][k] / results[lo][name][k] for k in (0, 1))
            worst = max(worst, min(med, low))
            print(f"{name:56s}" + "".join(f"{results[n][name][0]:9.2f} /{results[n][name][1]:6.2f}"
                                          for n in args.sizes) + f"{med:6.2f}{low:6.2f}")
        report[kind] = {str(n): r for n, r in results.items()}
    verdict = "within" if worst <= TARGET_RATIO else "ABOVE"
    print(f"\nworst {min(args.sizes)} -> {max(args.sizes)} ratio (the lower of median's and min's): "
          f"{worst:.2f} "
          f"({verdict} the {TARGET_RATIO} target)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
