"""The job driver's reporting: backoff, spool, retries, delivery across a service outage, and a
real driver run (training and a failing eval) against the real API, without Ray."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from exec_support import make_test_settings, running_server, tiny_train_spec
from hypothesis import given
from hypothesis import strategies as st

from service.auth import tokens
from service.db import migrate
from service.events import store as events
from service.jobs import store, transitions
from service.ray_local import free_port
from workers.contract import outbox
from workers.contract.layout import JobLayout
from workers.jobs.reporter import (
    Backoff,
    Rejected,
    Reporter,
    ReportError,
    ServiceClient,
    jsonable,
)

FAST = Backoff(base_s=0.01, factor=2.0, max_s=0.05, jitter=0.2)

# ------------------------------------------------------------------------------------- backoff

backoffs = st.builds(
    Backoff,
    base_s=st.floats(0.001, 5.0),
    factor=st.floats(1.0, 4.0),
    max_s=st.floats(5.0, 120.0),
    jitter=st.floats(0.0, 0.9),
)


@given(backoffs, st.integers(0, 10_000), st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_delay_is_positive_and_capped(policy: Backoff, retry: int, rand: float) -> None:
    d = policy.delay(retry, rand)
    assert 0 < d <= policy.max_s
    assert d >= min(policy.max_s, policy.base_s) * (1 - policy.jitter) - 1e-12


@given(backoffs, st.integers(0, 200), st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_grows_monotonically_for_a_fixed_draw(policy: Backoff, retry: int, rand: float) -> None:
    assert policy.delay(retry + 1, rand) >= policy.delay(retry, rand) - 1e-12


@given(st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_without_jitter_is_exactly_exponential(rand: float) -> None:
    policy = Backoff(base_s=0.5, factor=2.0, max_s=10.0, jitter=0.0)
    assert [policy.delay(i, rand) for i in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(base_s=0)
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(base_s=5, max_s=1)


def test_jsonable_replaces_non_finite_numbers_and_unwraps_scalars() -> None:
    import numpy as np

    out = jsonable({"loss": float("nan"), "x": [1.0, float("inf")], "n": np.int64(3), 4: np.float32(0.5)})
    assert out == {"loss": None, "x": [1.0, None], "n": 3, "4": 0.5}
    json.dumps(out, allow_nan=False)


# --------------------------------------------------------------------------------------- spool


def test_spool_numbers_acks_and_survives_a_torn_line(tmp_path: Path) -> None:
    spool = outbox.Spool(tmp_path, attempt=2)
    for seq in range(4):
        spool.append({"seq": seq, "type": "log", "data": {"i": seq}, "attempt": 2})
    with open(spool.path, "a") as f:
        f.write('{"seq": 4, "type": "lo')  # a crash mid-write
    assert [e["seq"] for e in spool.events()] == [0, 1, 2, 3]
    assert spool.acked() == -1 and spool.last_seq() == 3
    spool.ack(1)
    spool.ack(0)  # acknowledgements never move backwards
    assert spool.acked() == 1
    assert [e["seq"] for e in spool.pending()] == [2, 3]
    outbox.Spool(tmp_path, attempt=1).append({"seq": 0, "type": "log", "data": {}})
    assert [s.attempt for s in outbox.spools(tmp_path)] == [1, 2]


def test_result_file_is_per_attempt(tmp_path: Path) -> None:
    assert outbox.read_result(tmp_path) is None
    outbox.write_result(tmp_path, attempt=3, status="succeeded", metrics={"union": 0.5})
    assert outbox.read_result(tmp_path, attempt=3) == {"attempt": 3, "status": "succeeded",
                                                       "metrics": {"union": 0.5}}
    assert outbox.read_result(tmp_path, attempt=2) is None
    (tmp_path / outbox.RESULT_FILE).write_text("{not json")
    assert outbox.read_result(tmp_path) is None
    with pytest.raises(ValueError, match="succeeded or failed"):
        outbox.write_result(tmp_path, attempt=1, status="running")


# ------------------------------------------------------------------------------- ServiceClient


def _client(handler: Any, sleeps: list[float], **kw: Any) -> ServiceClient:
    return ServiceClient(
        "http://svc", 7, "tok", backoff=Backoff(base_s=0.1, factor=2, max_s=1.0, jitter=0.0),
        http=httpx.Client(transport=httpx.MockTransport(handler)), sleep=sleeps.append,
        rng=random.Random(0), **kw,
    )


def test_client_retries_transient_failures_with_backoff() -> None:
    calls: list[httpx.Request] = []
    answers = [503, "drop", 429, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers[len(calls) - 1]
        if answer == "drop":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(answer, json={"ok": True})

    sleeps: list[float] = []
    client = _client(handler, sleeps)
    client.post_events([{"seq": 0, "type": "log", "data": {}}], deadline=None)
    assert len(calls) == 4
    assert sleeps == [0.1, 0.2, 0.4]
    assert calls[0].url.path == "/internal/jobs/7/events"
    assert calls[0].headers["authorization"] == "Bearer tok"
    assert json.loads(calls[-1].content) == {"events": [{"seq": 0, "type": "log", "data": {}}]}


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422])
def test_client_does_not_retry_client_errors(code: int) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(code, text="nope")

    sleeps: list[float] = []
    with pytest.raises(Rejected) as err:
        _client(handler, sleeps).post_status("running")
    assert err.value.status_code == code and len(calls) == 1 and sleeps == []


def test_client_gives_up_at_the_deadline() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    client = ServiceClient(
        "http://svc", 1, "t", backoff=Backoff(base_s=1.0, factor=2, max_s=8, jitter=0.0),
        http=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(502))),
        sleep=sleep, clock=lambda: now[0],
    )
    with pytest.raises(ReportError, match="deadline.*HTTP 502"):
        client.post_status("succeeded", metrics={"union": 1.0}, timeout_s=10.0)
    assert sleeps == [1.0, 2.0, 4.0]  # the next wait (8 s) would end after the deadline (10 s)


# ------------------------------------------------------------ Reporter against the real API


@pytest.fixture
def service(tmp_path: Path):  # noqa: ANN201
    """The real app (no dispatcher) on a known port, plus one train job and its driver token."""
    from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token
    from service.main import create_app

    port = free_port()
    settings = make_test_settings(tmp_path / "home", port=port)
    migrate.upgrade(str(settings.database_url))
    app = create_app(settings, start_dispatcher=False)
    token = generate_token(DRIVER_TOKEN_PREFIX)
    with app.state.session_factory() as s:
        job = store.create_job(s, tiny_train_spec(), kind="train", idempotency_key=None, token_id=None)
        tokens.set_job_token(s, job.id, hash_token(token))
    return {"app": app, "settings": settings, "port": port, "job_id": job.id, "token": token,
            "url": f"http://127.0.0.1:{port}"}


def _stored(app: Any, job_id: int) -> list[tuple[int, int | None, str]]:
    with app.state.session_factory() as s:
        return [(e.attempt, e.seq, e.type) for e in events.list_events(s, job_id, limit=1000)
                if e.type != "status"]


def test_events_survive_a_service_outage_and_a_driver_restart(
    service: dict[str, Any], tmp_path: Path
) -> None:
    app, job_id = service["app"], service["job_id"]
    spool_dir = tmp_path / "spool"

    def client() -> ServiceClient:
        return ServiceClient(service["url"], job_id, service["token"], backoff=FAST)

    # The service is down: events are numbered and spooled, delivery keeps failing.
    first = Reporter(client(), attempt=1, spool_dir=spool_dir, flush_interval_s=0.01).start()
    for i in range(3):
        first.log(f"line {i}")
    assert first.close(timeout_s=0.3) is False
    assert [e["seq"] for e in outbox.Spool(spool_dir, 1).pending()] == [0, 1, 2]

    # A second reporter of the same attempt emits while the service is still down, then it comes up.
    second = Reporter(client(), attempt=1, spool_dir=spool_dir, flush_interval_s=0.01).start()
    assert second.metrics({"epoch": 1, "loss": float("nan")}) == 3
    with running_server(app, service["port"]):
        assert second.flush(timeout_s=20)
        second.progress(1, 2, force=True)
        assert second.close(timeout_s=20) is True
        assert _stored(app, job_id) == [(1, 0, "log"), (1, 1, "log"), (1, 2, "log"), (1, 3, "metrics"),
                                        (1, 4, "progress")]
        # Re-sending an acknowledged batch (a lost answer) stores nothing twice.
        client().post_events(outbox.Spool(spool_dir, 1).events()[:2], deadline=None)
        assert len(_stored(app, job_id)) == 5
        with app.state.session_factory() as s:
            metrics = events.list_events(s, job_id, type="metrics")[0].data
            assert metrics["loss"] is None and metrics["epoch"] == 1
            assert store.get_job(s, job_id).progress["fraction"] == 0.5
    assert outbox.Spool(spool_dir, 1).acked() == 4


def test_progress_is_throttled(service: dict[str, Any], tmp_path: Path) -> None:
    now = [0.0]
    client = ServiceClient(service["url"], service["job_id"], service["token"], backoff=FAST)
    rep = Reporter(client, attempt=1, spool_dir=tmp_path, progress_interval_s=1.0, clock=lambda: now[0])
    sent = []
    for step in range(1, 11):
        now[0] += 0.3
        sent.append(rep.progress(step, 10))
    # at t=0.3 (first), then >= 1 s later (t=1.5, 2.7), and the final step always
    assert [s is not None for s in sent] == [True, False, False, False, True, False, False, False, True, True]


def test_a_revoked_token_stops_delivery(service: dict[str, Any], tmp_path: Path) -> None:
    with running_server(service["app"], service["port"]):
        client = ServiceClient(service["url"], service["job_id"], "rampjob_wrong", backoff=FAST)
        rep = Reporter(client, attempt=1, spool_dir=tmp_path, flush_interval_s=0.01).start()
        rep.log("hello")
        assert rep.close(timeout_s=5) is False
        assert _stored(service["app"], service["job_id"]) == []


# --------------------------------------------------------------------- the driver, without Ray


def _train_in_process(spec: Any, out_dir: Path, reporter: Any, resume: bool, *,
                      resources: Any = None, fence: Any = None) -> dict:
    """The driver's training step without Ray Train (the Ray path is tested in test_dispatcher_ray)."""
    from workers.jobs.driver import ReportingCallback
    from workers.training.callbacks import AttemptFenceCallback
    from workers.training.loop import run_training

    callbacks: list[Any] = [] if reporter is None else [ReportingCallback(reporter, out_dir)]
    if fence is not None:
        callbacks.append(AttemptFenceCallback(fence))
    return run_training(spec, out_dir, callbacks=callbacks, resume=resume)


def test_driver_runs_a_training_job_and_reports_everything(
    service: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.jobs import driver
    from workers.jobs.driver import run_job

    monkeypatch.setattr(driver, "run_train_job", _train_in_process)
    app, job_id = service["app"], service["job_id"]
    storage = tmp_path / "storage"
    with app.state.session_factory() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="test")
    with running_server(app, service["port"]):
        code = run_job(ServiceClient(service["url"], job_id, service["token"]), storage)
    assert code == 0
    with app.state.session_factory() as s:
        job = store.get_job(s, job_id)
        stored = events.list_events(s, job_id, limit=1000)
    assert job.status == "succeeded", job.error
    assert {"clean", "linf", "l2", "l1", "union"} <= set(job.result)
    assert all(0.0 <= job.result[k] <= 1.0 for k in ("clean", "linf", "l2", "l1", "union"))
    assert job.result["n"] == 16
    types = [e.type for e in stored if e.seq is not None]
    assert [e.seq for e in stored if e.seq is not None] == list(range(len(types)))
    assert {"log", "progress", "metrics", "artifact"} <= set(types)
    epoch = next(e.data for e in stored if e.type == "metrics")
    assert epoch["epoch"] == 1 and "ce" in epoch["losses"]
    artifacts = {e.data["name"] for e in stored if e.type == "artifact"}
    assert {"metrics.json", "history.jsonl", "checkpoint/model.safetensors"} <= artifacts
    assert outbox.read_result(storage / "jobs" / str(job_id), attempt=1)["status"] == "succeeded"
    # Events come before the verdict, so a follower sees all of them before 'succeeded'.
    assert stored[-1].type == "status" and stored[-1].data["to"] == "succeeded"


def test_driver_reports_a_failure_with_its_reason(service: dict[str, Any], tmp_path: Path) -> None:
    from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token
    from workers.jobs.driver import run_job

    app = service["app"]
    token = generate_token(DRIVER_TOKEN_PREFIX)
    # Under the data roots, as a submission's paths are (the driver re-checks that), but absent.
    missing = app.state.settings.data_roots[0] / "missing"
    spec = {"kind": "eval", "checkpoint": str(missing), "suite": "monitor", "n": 8}
    with app.state.session_factory() as s:
        job = store.create_job(s, spec, kind="eval", idempotency_key=None, token_id=None)
        tokens.set_job_token(s, job.id, hash_token(token))
        transitions.claim_queued_jobs(s, limit=5, claimer="test")
    storage = tmp_path / "storage"
    with running_server(app, service["port"]):
        assert run_job(ServiceClient(service["url"], job.id, token), storage) == 1
    with app.state.session_factory() as s:
        failed = store.get_job(s, job.id)
        logs = events.list_events(s, job.id, type="log")
    assert failed.status == "failed"
    assert "CheckpointError" in failed.error and "missing" in failed.error
    assert any(e.data["level"] == "error" for e in logs)
    assert outbox.read_result(storage / "jobs" / str(job.id))["status"] == "failed"


def test_driver_leaves_its_verdict_on_disk_when_the_service_is_gone(
    service: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec is fetched, then the service disappears: result.json and the spool remain."""
    from workers.jobs import driver

    storage = tmp_path / "storage"
    info = {"job_id": service["job_id"], "attempt": 1, "kind": "eval", "job_dir": "/unused", "resume": False,
            "spec": {"kind": "eval", "checkpoint": str(tmp_path / "missing"), "n": 4}}
    client = ServiceClient(service["url"], service["job_id"], service["token"], backoff=FAST)
    monkeypatch.setattr(client, "get_spec", lambda **_: info)
    monkeypatch.setattr(driver, "FINAL_FLUSH_S", 0.2)
    real_post = client.post_status

    def post_status(status: str, **kw: Any) -> Any:
        return real_post(status, **kw | {"timeout_s": 0.2})

    monkeypatch.setattr(client, "post_status", post_status)
    # Nothing listens on the service's port: neither 'running' nor 'failed' can be delivered.
    assert driver.run_job(client, storage) == 1
    result = outbox.read_result(storage / "jobs" / str(service["job_id"]), attempt=1)
    assert result is not None and result["status"] == "failed" and "CheckpointError" in result["error"]
    pending = outbox.Spool(JobLayout.at(storage).spool_dir(service["job_id"]), 1).pending()
    assert any(e["type"] == "log" and e["data"]["level"] == "error" for e in pending)


def test_reporting_callback_maps_training_hooks_to_events(tmp_path: Path) -> None:
    from workers.jobs.driver import ReportingCallback
    from workers.training.callbacks import EpochReport, TrainInfo

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any, dict[str, Any]]] = []

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **kw: self.calls.append((name, a, kw))

    rec = Recorder()
    cb = ReportingCallback(rec, tmp_path)  # type: ignore[arg-type]
    cb.on_train_start(TrainInfo(spec={}, out_dir=str(tmp_path), device="cpu", epochs=2, steps_per_epoch=3,
                                total_steps=6, start_epoch=1, start_step=3))
    cb.on_step(4, 6)
    cb.on_checkpoint(str(tmp_path / "checkpoint"))
    report = EpochReport(epoch=2, epochs=2, step=6, total_steps=6, lr=0.1, losses={"ce": 0.5}, seconds=1.0)
    cb.on_epoch_end(report)
    cb.on_train_end({"union": 0.1})
    names = [c[0] for c in rec.calls]
    assert names == ["log", "progress", "progress", "artifact", "metrics", "progress", "log", "progress"]
    assert "resuming at epoch 1 (step 3)" in rec.calls[0][1][0]
    assert rec.calls[3][1] == ("checkpoint",)
    assert rec.calls[4][1][0] == report.to_dict()
    assert rec.calls[-1][1] == (6, 6) and rec.calls[-1][2]["phase"] == "done"



# ------------------------------------------------------------------ a batch with one bad event


def _stub(handler: Any, attempt: int | None = 1) -> ServiceClient:
    return ServiceClient("http://svc", 7, "tok", attempt=attempt, backoff=FAST,
                         http=httpx.Client(transport=httpx.MockTransport(handler)))


def test_one_refused_event_costs_only_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One oversized log line makes the service answer 413 for its whole batch: the batch is
    bisected, the 199 other events are delivered (in order, once each) and only that line is
    dropped, with a warning on stderr and a log event saying so."""
    received: list[dict[str, Any]] = []
    posts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        batch = json.loads(request.content)["events"]
        if any(len(e["data"].get("message", "")) > 10_000 for e in batch):
            return httpx.Response(413, json={"detail": "request body too large"})
        received.extend(batch)
        return httpx.Response(200, json={"ok": True, "received": len(batch)})

    rep = Reporter(_stub(handler), attempt=1, spool_dir=tmp_path, batch_size=200, flush_interval_s=0.01)
    for i in range(200):
        rep.log("x" * 20_000 if i == 137 else f"line {i}")
    assert rep.start().close(timeout_s=30) is True
    seqs = [e["seq"] for e in received]
    assert seqs[:199] == [i for i in range(200) if i != 137] and len(set(seqs)) == len(seqs)
    (notice,) = received[199:]
    assert notice["data"]["dropped_seq"] == 137 and notice["data"]["status_code"] == 413
    assert (rep.delivered, rep.dropped) == (200, 1)
    assert outbox.Spool(tmp_path, 1).acked() == 200
    assert len(posts) <= 2 * 8 + 2, "bisected, not sent one by one"
    assert all(p.headers["x-ramp-attempt"] == "1" for p in posts)
    assert "dropped event seq 137" in capsys.readouterr().err


def test_a_refusal_of_the_driver_itself_stops_delivery_without_bisecting(tmp_path: Path) -> None:
    posts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(409, json={"detail": "stale", "refusal": "stale_attempt", "status": "running"})

    rep = Reporter(_stub(handler), attempt=1, spool_dir=tmp_path, flush_interval_s=0.01)
    for i in range(50):
        rep.log(f"line {i}")
    assert rep.start().close(timeout_s=10) is False
    assert len(posts) == 1 and rep.dropped == 0
    assert len(outbox.Spool(tmp_path, 1).pending()) == 50, "kept in the spool"


# ------------------------------------------------------------------- the driver's own fences


def _eval_job(app: Any, tmp_path: Path) -> tuple[int, str]:
    from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token

    token = generate_token(DRIVER_TOKEN_PREFIX)
    missing = app.state.settings.data_roots[0] / "missing"  # under the roots (the driver re-checks)
    spec = {"kind": "eval", "checkpoint": str(missing), "suite": "monitor", "n": 8}
    with app.state.session_factory() as s:
        job = store.create_job(s, spec, kind="eval", idempotency_key=None, token_id=None)
        tokens.set_job_token(s, job.id, hash_token(token))
        transitions.claim_queued_jobs(s, limit=5, claimer="test")
    return job.id, token


def test_the_driver_reads_its_token_file_and_states_its_attempt(
    service: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from workers.contract.attempts import issue_token_file
    from workers.jobs import driver

    app = service["app"]
    job_id, token = _eval_job(app, tmp_path)
    token_file = tmp_path / "secrets" / "t.token"
    issue_token_file(token_file, lambda: token)
    monkeypatch.delenv("RAMP_JOB_TOKEN", raising=False)
    monkeypatch.setenv("RAMP_SERVICE_URL", service["url"])
    monkeypatch.setenv("RAMP_JOB_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("RAMP_STORAGE_DIR", str(tmp_path / "storage"))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with running_server(app, service["port"]):
            monkeypatch.setenv("RAMP_JOB_ATTEMPT", "2")  # not the job's attempt: refused, runs nothing
            assert driver.main(["--job-id", str(job_id)]) == driver.EXIT_FAILED
            with app.state.session_factory() as s:
                assert store.get_job(s, job_id).status == "dispatching"
            assert not (tmp_path / "storage" / "jobs" / str(job_id)).exists()
            monkeypatch.setenv("RAMP_JOB_ATTEMPT", "1")
            # Accepted now; the eval itself fails (no such checkpoint), and says so.
            assert driver.main(["--job-id", str(job_id)]) == driver.EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    with app.state.session_factory() as s:
        job = store.get_job(s, job_id)
    assert job.status == "failed" and "CheckpointError" in job.error


def test_a_driver_started_after_its_job_ended_or_was_superseded_touches_nothing(
    service: dict[str, Any], tmp_path: Path
) -> None:
    from workers.contract.attempts import write_attempt_marker
    from workers.jobs.driver import EXIT_STOPPED, run_job

    app = service["app"]
    storage = tmp_path / "storage"
    layout = JobLayout.at(storage)
    cancelled, cancelled_token = _eval_job(app, tmp_path)
    superseded, superseded_token = _eval_job(app, tmp_path)
    with app.state.session_factory() as s:
        transitions.request_cancel(s, cancelled)
        transitions.transition(s, cancelled, "cancelled")
    # The marker names a later attempt than the one this driver runs (its Ray job started late).
    write_attempt_marker(layout.attempt_marker(superseded), 2)
    outbox.write_result(layout.job_dir(superseded), attempt=2, status="succeeded", metrics={"union": 1.0})
    with running_server(app, service["port"]):
        for job_id, token in ((cancelled, cancelled_token), (superseded, superseded_token)):
            assert run_job(ServiceClient(service["url"], job_id, token, attempt=1), storage) == EXIT_STOPPED
    assert not layout.job_dir(cancelled).exists()
    assert outbox.read_result(layout.job_dir(superseded), attempt=2) is not None, "the newer result is kept"
    with app.state.session_factory() as s:
        assert store.get_job(s, cancelled).status == "cancelled"
        assert store.get_job(s, superseded).status == "dispatching"
        assert events.list_events(s, superseded, type="log") == []


@pytest.mark.slow
def test_driver_selects_the_key_pair_before_a_ramp_job(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ramp.pair=auto through a job: the driver trains the single-norm AT models (quietly), picks
    the pair, trains RAMP with it and returns the selection in the job's result."""
    from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token
    from service.jobs.checkpoints import checkpoint_resolver
    from service.jobs.specs import build_stored_spec, parse_job_request
    from service.main import create_app
    from workers.jobs import driver
    from workers.training.loop import run_training

    calls: list[str] = []

    def train(spec: Any, out_dir: Path, reporter: Any, resume: bool, *, resources: Any = None,
              fence: Any = None) -> dict:
        calls.append(spec.method)
        if reporter is None:  # the selection's single-norm models train quietly
            return run_training(spec, out_dir, resume=resume)
        return _train_in_process(spec, out_dir, reporter, resume, fence=fence)

    monkeypatch.setattr(driver, "run_train_job", train)
    port = free_port()
    settings = make_test_settings(tmp_path / "home", port=port)
    migrate.upgrade(str(settings.database_url))
    app = create_app(settings, start_dispatcher=False)
    token = generate_token(DRIVER_TOKEN_PREFIX)
    params = {"ramp.pair": "auto", "ramp.pair_n": 10, "attack.steps_linf": 2, "attack.steps_l2": 2,
              "attack.steps_l1": 2}
    body = tiny_train_spec(eval_n=8, checks_n=0) | {"params": params}
    with app.state.session_factory() as s:
        resolver = checkpoint_resolver(s, settings)
        stored = build_stored_spec(parse_job_request(body), resolve_checkpoint=resolver)
        job = store.create_job(s, stored, kind="train", idempotency_key=None, token_id=None)
        tokens.set_job_token(s, job.id, hash_token(token))
        transitions.claim_queued_jobs(s, limit=1, claimer="test")
    with running_server(app, port):
        code = driver.run_job(ServiceClient(f"http://127.0.0.1:{port}", job.id, token), tmp_path / "storage")
    assert code == 0
    assert calls == ["at-linf", "at-l2", "at-l1", "ramp"]
    with app.state.session_factory() as s:
        done = store.get_job(s, job.id)
    assert done.status == "succeeded", done.error
    report = done.result["pair_selection"]
    assert report["q"] != report["r"] and set(report["matrix"]) == {"linf", "l2", "l1"}
    meta = json.loads((tmp_path / "storage" / "jobs" / str(job.id) / "checkpoint" / "meta.json").read_text())
    assert (meta["spec"]["params"]["ramp.q"], meta["spec"]["params"]["ramp.r"]) == (report["q"], report["r"])


class _SpecOnly:
    """A service client that only answers ``get_spec``: the job is already ``status``."""

    def __init__(self, status: str, job_dir: Path) -> None:
        self.status, self.job_dir = status, job_dir

    def get_spec(self) -> dict[str, Any]:
        return {"job_id": 7, "attempt": 1, "kind": "train", "status": self.status,
                "job_dir": str(self.job_dir)}


def test_a_driver_starting_on_a_cancel_waits_for_rays_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray records a job STOPPED only if its stop reaches the driver; a driver that left on its own
    (exit 143) first would make a cancelled job FAILED on the Ray dashboard."""
    import signal
    import threading

    from workers.jobs import driver

    client = _SpecOnly("cancelling", tmp_path / "jobs" / "7")
    previous = signal.signal(signal.SIGTERM, driver._on_sigterm)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))  # Ray's stop, a moment later
    try:
        timer.start()
        with pytest.raises(driver.JobStopped):  # still there when the stop came: main() exits 143
            driver.run_job(client, tmp_path)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    # no stop ever comes (a dead dispatcher): the driver leaves after its wait
    monkeypatch.setattr(driver, "CANCEL_STOP_WAIT_S", 0.05)
    assert driver.run_job(client, tmp_path) == driver.EXIT_STOPPED
    # an ended job: nothing to wait for
    monkeypatch.setattr(driver, "CANCEL_STOP_WAIT_S", 3600.0)
    for status in ("cancelled", "succeeded", "failed"):
        assert driver.run_job(_SpecOnly(status, tmp_path / "jobs" / "7"), tmp_path) == driver.EXIT_STOPPED
