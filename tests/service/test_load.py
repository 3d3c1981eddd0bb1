"""Load, CI-sized: 50 concurrent clients submit jobs to the real service process (``rampctl serve``,
uvicorn) on PostgreSQL, half of the submissions twice with the same Idempotency-Key (some of the
repeats racing their original, some late). Every accepted job must be stored exactly once, with no
5xx. The full-size run is ``.venv/bin/python bench/bench_load.py`` (same code: bench.bench_load).

The dispatcher runs, but Ray is unreachable (RAY_ADDRESS points at a closed port): jobs queue.
The figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_load import create_tenant_tokens, run_load, serve_subprocess, summary  # noqa: E402

SUBMISSIONS = 200  # + 100 repeats = 300 requests
CLIENTS = 50
TENANTS = 10


def test_concurrent_idempotent_submissions_are_stored_exactly_once(pg_empty_url: str, tmp_path: Path) -> None:
    tokens = create_tenant_tokens(pg_empty_url, TENANTS)
    with serve_subprocess(pg_empty_url, tmp_path / "home") as url:
        result = run_load(url, pg_empty_url, tokens, submissions=SUBMISSIONS, clients=CLIENTS, timeout_s=120)
    figures = result.figures
    print("\nLOAD:", summary(figures))
    assert result.problems == [], result.problems[:20]
    assert figures["requests"] == SUBMISSIONS + SUBMISSIONS // 2
    assert figures["created_201"] == SUBMISSIONS and figures["replayed_200"] == SUBMISSIONS // 2
    assert figures["jobs_stored"] == SUBMISSIONS
    assert figures["errors_5xx"] == 0 and figures["duplicates"] == 0 and figures["lost"] == 0
