"""Database blip: while the service runs on PostgreSQL, the database becomes unreachable and comes
back. The service reaches PostgreSQL through a TCP proxy the test controls (fault_support.FaultProxy):

1. refused: every open connection reset, new ones refused (the server is down or restarting);
2. stalled: connections accepted, nothing answered, on the pooled connections too (a frozen server,
   a network path that drops everything);
3. restored.

While the database is away, every API call that needs it -- public, driver (internal) and
/metrics -- answers 503 with ``Retry-After``, within the configured timeouts (no 500, no hang),
also under a burst of concurrent requests; ``/readyz`` says not ready (503, database unreachable)
and ``/healthz`` stays 200. Once the database is back, without a restart: ``/readyz`` is ready
again, the submission refused during the outage goes through (stored once), the driver's re-sent
events are stored once, and the dispatcher resumes claiming and finishing jobs.

The service is the real app under uvicorn (in a thread, so the test can read its dispatcher's
heartbeat) with an in-memory Ray (exec_support.FakeBackend) the test moves jobs through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from exec_support import (
    ADMIN_TOKEN,
    FakeBackend,
    make_test_settings,
    running_server,
    tiny_train_spec,
    wait_for,
)
from fault_support import FaultProxy
from sqlalchemy.engine import make_url

from service.ray_local import free_port

CONNECT_S = 2.0  # RAMP_DB_CONNECT_TIMEOUT_S
POOL_S = 2.0  # RAMP_DB_POOL_TIMEOUT_S
STATEMENT_S = 3.0  # RAMP_DB_STATEMENT_TIMEOUT_S
RETRY_AFTER = "3"  # RAMP_RETRY_AFTER_S
# The longest a request may take while the database is away: a stalled query or ping (statement
# timeout + connect timeout), then a new connection's attempt (connect timeout), and waiting for
# a pool slot (pool timeout); plus slack for a loaded 2-core machine.
BOUND_S = STATEMENT_S + 2 * CONNECT_S + POOL_S + 6.0
BURST = 40  # concurrent requests during the stall (the pool holds 10 + 20 overflow)


@pytest.fixture
def proxy(pg_empty_url: str) -> Iterator[FaultProxy]:
    url = make_url(pg_empty_url)
    with FaultProxy(url.host or "127.0.0.1", url.port or 5432) as p:
        yield p


@pytest.fixture(autouse=True)
def _restore_wait_limits() -> Iterator[None]:
    """The app bounds psycopg2's waits process-wide with this test's short timeouts: put back what
    was there for the tests that follow in this process."""
    import psycopg2.extensions

    from service.db import session

    callback, limits = psycopg2.extensions.get_wait_callback(), session._WAIT_LIMITS
    yield
    psycopg2.extensions.set_wait_callback(callback)
    session._WAIT_LIMITS = limits


def ray_job_of(ray: FakeBackend, job_id: int) -> str | None:
    """The (fake) Ray job submitted for ``job_id``, if any."""
    return next((k for k, j in ray.jobs.items() if j.entrypoint.endswith(f"--job-id {job_id}")), None)


def _timed(fn: Any) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = fn()
    return r, time.monotonic() - t0


def test_the_service_rides_out_a_database_blip(pg_empty_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    port = free_port()
    url = make_url(pg_empty_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = make_test_settings(
        tmp_path / "home", database_url=url, port=port, public_url=f"http://127.0.0.1:{port}",
        ray_address="http://fake-ray:8265", ray_dashboard_url="http://fake-ray:8265",
        dispatch_interval_s=0.2, max_concurrent_jobs=4, db_connect_timeout_s=CONNECT_S,
        db_pool_timeout_s=POOL_S, db_statement_timeout_s=STATEMENT_S, retry_after_s=int(RETRY_AFTER),
        log_level="ERROR",
    )
    from service.main import create_app

    app = create_app(settings)
    ray = FakeBackend()
    app.state.backend = ray  # the runtime adopts it instead of connecting to a Ray cluster
    figures: dict[str, Any] = {}
    with running_server(app, port) as base, httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120
    ) as client:
        dispatcher = app.state.dispatcher

        # --- before: job A claimed, submitted, running; its driver delivers events 0..4.
        a = client.post("/v1/jobs", json=tiny_train_spec(seed=1)).json()["id"]
        ray_a = wait_for(lambda: ray_job_of(ray, a), 60, "job A to be submitted to Ray")
        ray.jobs[ray_a].status = "RUNNING"
        wait_for(lambda: client.get(f"/v1/jobs/{a}").json()["status"] == "running", 60, "job A running")
        token = Path(ray.jobs[ray_a].env_vars["RAMP_JOB_TOKEN_FILE"]).read_text().strip()
        driver = {"Authorization": f"Bearer {token}", "X-Ramp-Attempt": "1"}

        def batch(seqs: range) -> dict[str, Any]:
            return {"events": [{"seq": s, "type": "log", "data": {"message": f"line {s}"}, "attempt": 1}
                               for s in seqs]}

        events_url = f"/internal/jobs/{a}/events"
        assert client.post(events_url, json=batch(range(0, 5)), headers=driver).status_code == 200
        assert client.get("/readyz").status_code == 200
        key = "blip-submission-b"
        spec_b = tiny_train_spec(seed=2)

        calls = {
            "GET /v1/jobs": lambda: client.get("/v1/jobs"),
            "GET /v1/jobs/{id}": lambda: client.get(f"/v1/jobs/{a}"),
            "GET /v1/jobs/{id}/events": lambda: client.get(f"/v1/jobs/{a}/events"),
            "POST /v1/jobs": lambda: client.post("/v1/jobs", json=spec_b, headers={"Idempotency-Key": key}),
            "POST /v1/jobs/{id}/cancel": lambda: client.post(f"/v1/jobs/{a}/cancel"),
            "POST /internal/jobs/{id}/events": lambda: client.post(
                f"/internal/jobs/{a}/events", json=batch(range(5, 10)), headers=driver),
            "POST /internal/jobs/{id}/status": lambda: client.post(
                f"/internal/jobs/{a}/status", json={"status": "succeeded", "metrics": {"clean": 1.0}},
                headers=driver),
            "GET /metrics": lambda: client.get("/metrics"),
        }
        answered: list[float] = []
        figures["answers_503"] = 0

        def while_away(phase: str) -> None:
            for name, call in calls.items():
                r, took = _timed(call)
                answered.append(took)
                assert r.status_code == 503, (phase, name, r.status_code, r.text)
                assert r.headers.get("Retry-After") == RETRY_AFTER, (phase, name, dict(r.headers))
                assert "database unavailable" in r.json()["detail"], (phase, name, r.text)
                assert took <= BOUND_S, (phase, name, took)
                figures["answers_503"] += 1
            r, took = _timed(lambda: client.get("/readyz"))
            assert r.status_code == 503, (phase, r.text)
            assert r.json()["checks"]["database"] == "unreachable", (phase, r.json())
            assert took <= BOUND_S, (phase, "/readyz", took)
            figures["answers_503"] += 1
            assert client.get("/healthz").status_code == 200
            wait_for(lambda: dispatcher.health()["consecutive_errors"] >= 1, 60, "a dispatcher pass to fail")

        # --- 1. refused
        proxy.refuse()
        outage_started = time.monotonic()
        while_away("refused")
        figures["refused_max_s"] = max(answered)

        # --- 2. stalled: first the pooled connections (the database was back in between, so the
        # pool holds live connections when it freezes), then a burst of concurrent requests.
        proxy.restore()
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, "readiness between the phases")
        with ThreadPoolExecutor(BURST) as pool:  # fill the pool with live connections
            assert {r.status_code for r in pool.map(lambda _: client.get("/v1/jobs"), range(BURST))} == {200}
        answered.clear()
        proxy.stall()
        while_away("stalled")

        def one(_: int) -> tuple[int, str | None, float]:
            r, took = _timed(lambda: client.get("/v1/jobs"))
            return r.status_code, r.headers.get("Retry-After"), took

        with ThreadPoolExecutor(BURST) as pool:
            burst = list(pool.map(one, range(BURST)))
        assert {(s, h) for s, h, _ in burst} == {(503, RETRY_AFTER)}, burst
        figures["answers_503"] += len(burst)
        answered += [t for _, _, t in burst]
        figures["stalled_max_s"] = max(answered)
        assert max(answered) <= BOUND_S

        # --- 3. restored: the same process recovers.
        proxy.restore()
        restored = time.monotonic()
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, "readiness after the outage")
        figures["ready_after_s"] = time.monotonic() - restored
        figures["outage_s"] = restored - outage_started

        r = client.post("/v1/jobs", json=spec_b, headers={"Idempotency-Key": key})
        assert r.status_code == 201, r.text  # the refused submission was not half-stored
        b = r.json()["id"]
        assert client.post("/v1/jobs", json=spec_b, headers={"Idempotency-Key": key}).json()["id"] == b
        assert client.post(events_url, json=batch(range(5, 10)), headers=driver).status_code == 200
        assert client.post(events_url, json=batch(range(0, 10)), headers=driver).status_code == 200
        logs = client.get(f"/v1/jobs/{a}/events", params={"type": "log", "limit": 1000}).json()["events"]
        assert sorted(e["seq"] for e in logs) == list(range(10))  # re-sent batches stored once

        # The dispatcher claims again: B reaches Ray and runs; A's driver reports its end.
        ray_b = wait_for(lambda: ray_job_of(ray, b), 60, "job B to be claimed and submitted after the outage")
        figures["claim_after_s"] = time.monotonic() - restored
        ray.jobs[ray_b].status = "RUNNING"
        wait_for(lambda: client.get(f"/v1/jobs/{b}").json()["status"] == "running", 60, "job B running")
        r = client.post(f"/internal/jobs/{a}/status", json={"status": "succeeded", "metrics": {"clean": 1.0}},
                        headers=driver)
        assert r.status_code == 200, r.text
        ray.jobs[ray_a].status = "SUCCEEDED"
        assert client.get(f"/v1/jobs/{a}").json()["status"] == "succeeded"
        assert dispatcher.health()["consecutive_errors"] == 0
        jobs = client.get("/v1/jobs").json()["jobs"]
        assert sorted(j["id"] for j in jobs) == sorted([a, b])  # nothing created twice, nothing lost
        assert len(ray.jobs) == 2
    print(f"\nDATABASE BLIP: {figures['answers_503']} answers while away, all 503 + Retry-After "
          f"({len(calls)} routes x 2 phases + {BURST} concurrent); slowest {figures['stalled_max_s']:.1f} s "
          f"stalled, {figures['refused_max_s']:.2f} s refused (bound {BOUND_S:.0f} s); outage "
          f"{figures['outage_s']:.0f} s; ready {figures['ready_after_s']:.1f} s and claiming "
          f"{figures['claim_after_s']:.1f} s after the database returned; no restart")
