"""/healthz, /readyz (DB and Ray probes), /metrics exposition, settings, and the no-torch rule."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from service.api.routes import health
from service.core.config import Settings
from service.db.session import make_engine
from service.dispatcher.health import LoopHealth
from service.dispatcher.policy import DispatchPolicy
from service.jobs import transitions

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"kind": "train", "epochs": 1}


class Probe:
    def __init__(self, result: object) -> None:
        self.result = result

    def ping(self) -> object:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_healthz(api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_db_and_ray(api) -> None:
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {
        "database": "ok", "ray": "not configured", "dispatcher": "not running in this process"}
    api.app.state.backend = Probe(True)
    assert api.client.get("/readyz").json()["checks"]["ray"] == "ok"
    # Ray down: the API still serves (jobs queue), so ready -- but degraded, and it says why.
    api.app.state.backend = Probe(ConnectionError("GCS at 127.0.0.1:6379 unreachable"))
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "degraded"
    assert r.json()["checks"]["ray"] == "unreachable"
    assert any("GCS at 127.0.0.1:6379 unreachable" in reason for reason in r.json()["reasons"])
    api.app.state.backend = Probe(False)
    assert api.client.get("/readyz").json()["checks"]["ray"] == "unreachable"


class HangingProbe:
    def __init__(self) -> None:
        self.release = threading.Event()

    def ping(self) -> None:
        self.release.wait(60)


def test_readyz_answers_in_bounded_time_when_ray_hangs(api) -> None:
    probe = HangingProbe()
    api.app.state.backend = probe
    try:
        started = time.monotonic()
        r = api.client.get("/readyz")
        elapsed = time.monotonic() - started
        assert r.json()["checks"]["ray"] == "unreachable"
        assert any("no answer within" in reason for reason in r.json()["reasons"]), r.json()
        # The probe deadline is 2 s; 15 s leaves room for a loaded machine but not for a hang.
        assert elapsed < health.READY_TIMEOUT_S + 13
    finally:
        probe.release.set()


class FakeDispatcher:
    def __init__(self, **health: object) -> None:
        self._health = health

    def health(self) -> dict[str, object]:
        return self._health


def test_readyz_includes_the_dispatcher_heartbeat(api) -> None:
    api.app.state.dispatcher = FakeDispatcher(last_pass_age_s=0.4, last_error=None, passes=12,
                                              reconciled=True)
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["dispatcher"] == "ok"
    api.app.state.dispatcher = FakeDispatcher(last_pass_age_s=300.0, last_error="OperationalError: gone",
                                              passes=12, reconciled=True)
    r = api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["dispatcher"] == "stalled"
    assert "OperationalError: gone" in r.json()["reasons"][0]


class LoopHealthDispatcher:
    """The real heartbeat (``LoopHealth``) on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.loop = LoopHealth(DispatchPolicy(), clock=lambda: self.now)

    def health(self) -> dict[str, object]:
        return self.loop.snapshot(running=True)


def test_readyz_is_not_ok_before_the_start_up_reconciliation_completes(api) -> None:
    dispatcher = LoopHealthDispatcher()
    api.app.state.dispatcher = dispatcher
    dispatcher.now += 5.0
    r = api.client.get("/readyz")
    # Serving (200) but not ok: the jobs that were running are not adopted yet.
    assert r.status_code == 200 and r.json()["status"] == "degraded", r.json()
    assert r.json()["checks"]["dispatcher"] == "starting"
    assert "start-up reconciliation not completed in 5 s" in r.json()["reasons"][0]
    # A reconciliation failing for longer than a stalled pass would: not ready, with its error.
    dispatcher.loop.pass_failed("start-up reconciliation", ConnectionError("Ray at :8265 refused"))
    dispatcher.now += health.DISPATCHER_STALE_S + 1
    r = api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["dispatcher"] == "stalled"
    assert "Ray at :8265 refused" in r.json()["reasons"][0]
    # Reconciled (what Dispatcher.reconcile does at its end): ok.
    dispatcher.loop.reconciled = True
    dispatcher.loop.pass_done()
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json() == {
        "status": "ok", "checks": {"database": "ok", "ray": "not configured", "dispatcher": "ok"},
        "reasons": []}


def test_readyz_and_api_when_the_database_is_down(api) -> None:
    good = api.app.state.session_factory
    dead_url = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    dead = make_engine(dead_url, connect_args={"connect_timeout": 1})
    api.app.state.session_factory = sessionmaker(bind=dead)
    try:
        r = api.client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["database"] == "unreachable"
        assert r.json()["reasons"][0].startswith("database: OperationalError")
        r = api.client.get("/v1/jobs", headers=api.auth)
        assert r.status_code == 503 and "database unavailable" in r.json()["detail"]
    finally:
        api.app.state.session_factory = good
        dead.dispose()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_exposition(api) -> None:
    # The ended counters belong to this process (earlier tests' jobs count too): compare deltas.
    before = _samples(api.client.get("/metrics").text)
    post = lambda i: api.client.post("/v1/jobs", json=TRAIN | {"seed": i}, headers=api.auth)  # noqa: E731
    ids = [post(i).json()["id"] for i in range(4)]
    api.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=api.auth)
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=2, claimer="t")
        transitions.transition(s, ids[1], "running")
        transitions.transition(s, ids[2], "failed", error="boom")
    r = api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)
    # Live statuses: counted in the database at scrape time.
    assert samples['ramp_jobs{status="running"}'] == 1
    assert samples['ramp_jobs{status="queued"}'] == 1
    assert samples['ramp_jobs{status="dispatching"}'] == 0
    assert 'ramp_jobs{status="cancelled"}' not in samples  # terminal totals are counters instead
    ended = lambda s, status: s[f'ramp_jobs_ended_total{{status="{status}"}}']  # noqa: E731
    assert ended(samples, "cancelled") - ended(before, "cancelled") == 1
    assert ended(samples, "failed") - ended(before, "failed") == 1
    assert ended(samples, "succeeded") - ended(before, "succeeded") == 0
    with api.sessions()() as s:
        transitions.retry_job(s, ids[2])  # failed -> queued is no ending: the counters stay
    again = _samples(api.client.get("/metrics").text)
    assert ended(again, "failed") == ended(samples, "failed") and again['ramp_jobs{status="queued"}'] == 2
    dispatched = samples["ramp_dispatch_latency_seconds_count"]
    assert dispatched >= 1 and samples['ramp_dispatch_latency_seconds_bucket{le="+Inf"}'] == dispatched
    key = 'ramp_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="201"}'
    assert samples[key] >= 3
    # Buckets are cumulative.
    buckets = [v for k, v in samples.items() if k.startswith("ramp_http_request_duration_seconds_bucket{")
               and 'route="/v1/jobs",status="201"' in k]
    assert buckets == sorted(buckets) and buckets[-1] == samples[key]
    assert "# TYPE ramp_jobs_ended_total counter" in r.text
    assert "# TYPE ramp_jobs gauge" in r.text and "# TYPE ramp_dispatch_latency_seconds histogram" in r.text


def test_the_service_imports_neither_torch_nor_ray(tmp_path: Path) -> None:
    code = (
        "import sys; import service.main, service.jobs.specs, service.jobs.store, service.api.schemas;"
        "from service.main import create_app; create_app(start_dispatcher=False);"
        "bad = [m for m in ('torch', 'ray', 'torchvision') if m in sys.modules];"
        "assert not bad, bad"
    )
    env = {"PYTHONPATH": str(REPO), "RAMP_HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_settings_read_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RAMP_HOME", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@db:5432/ramp")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("RAMP_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("RAMP_MAX_CONCURRENT_JOBS", "7")
    monkeypatch.setenv("RAMP_PORT", "9000")
    s = Settings()
    assert s.database_url == "postgresql://postgres@db:5432/ramp" and s.ray_address == "ray://head:10001"
    assert not s.embedded and s.max_body_bytes == 2048 and s.max_concurrent_jobs == 7
    assert s.public_url == "http://127.0.0.1:9000" and s.storage_dir == tmp_path / "artifacts"
    assert s.job_dir(5) == tmp_path / "artifacts" / "jobs" / "5"
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("RAY_ADDRESS")
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'ramp.db'}" and s.embedded
    assert s.admin_token_file == tmp_path / "admin_token" and s.ray_dashboard_url == "http://127.0.0.1:8265"


def test_openapi_lists_every_route(api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for p in ("/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/artifacts/{name}",
              "/internal/jobs/{job_id}/status", "/readyz", "/metrics"):
        assert p in paths


def test_json_log_lines_carry_the_extra_fields() -> None:
    import json
    import logging

    from service.core.logging import JsonFormatter

    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "job %s submitted", (7,), None)
    record.job_id = 7
    record.kind = "train"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "job 7 submitted" and line["level"] == "INFO" and line["logger"] == "service.x"
    assert line["job_id"] == 7 and line["kind"] == "train" and line["ts"].endswith("+00:00")
