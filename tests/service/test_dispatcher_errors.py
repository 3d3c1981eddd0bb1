"""One bad job does not stall the dispatcher (fake Ray, SQLite and PostgreSQL): a result or event
holding NaN / Infinity is stored as null with a ``nonfinite`` flag, an unexpected error while
processing one job is that job's (counted, backed off, finally failed), and the rest of the pass
-- other jobs, new claims -- goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from dispatch_support import BrokenInfo, ManualClock, create_job, get_job, ray_job
from exec_support import FakeBackend, make_test_settings
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.dispatcher import Dispatcher, DispatchPolicy
from service.events import store as events
from service.jobs import transitions
from workers.contract import outbox

NAN, INF = float("nan"), float("inf")
POLICY = DispatchPolicy(interval_s=0.05, submit_grace_s=0.0, max_job_errors=3, retry_delay_s=0.0)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_test_settings(tmp_path / "home", database_url=db_url, max_concurrent_jobs=1,
                              public_url="http://svc:8000")


def test_a_result_with_nan_is_recorded_as_null_with_a_flag_and_the_queue_moves_on(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend()
    d = Dispatcher(session_factory, backend, settings, policy=POLICY, clock=ManualClock())
    first = create_job(session_factory)
    d.tick()
    second = create_job(session_factory)
    metrics = {"clean": 0.5, "union": NAN, "history": [{"loss": 1.0}, {"loss": INF}]}
    outbox.write_result(settings.job_dir(first), attempt=1, status="succeeded", metrics=metrics)
    ray_job(backend, session_factory, first).status = "SUCCEEDED"
    assert d.tick()
    job = get_job(session_factory, first)
    assert job.status == "succeeded", job.error
    assert job.result == {"clean": 0.5, "union": None, "history": [{"loss": 1.0}, {"loss": None}],
                          "nonfinite": ["history[1].loss", "union"]}  # result.json's key order
    assert get_job(session_factory, second).status == "dispatching", "the next job was claimed"
    assert d.health()["job_errors"] == 0


def test_events_and_progress_with_nan_are_stored_as_null_with_a_flag(
    session_factory: sessionmaker[Session],
) -> None:
    job_id = create_job(session_factory)
    with session_factory() as s:
        events.add_events(s, job_id, [
            {"seq": 0, "type": "metrics", "data": {"epoch": 1, "losses": {"ce": NAN}}},
            {"seq": 1, "type": "progress", "data": {"step": 1, "total_steps": 2, "fraction": INF}},
        ])
        stored = [e.data for e in events.list_events(s, job_id) if e.seq is not None]
    assert stored[0] == {"epoch": 1, "losses": {"ce": None}, "nonfinite": ["losses.ce"]}
    assert stored[1]["fraction"] is None and stored[1]["nonfinite"] == ["fraction"]
    assert get_job(session_factory, job_id).progress == stored[1]


def test_a_result_with_nan_from_the_driver_report_is_recorded_too(
    session_factory: sessionmaker[Session],
) -> None:
    job_id = create_job(session_factory)
    with session_factory() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="c")
        transitions.driver_report(s, job_id, "succeeded", attempt=1, result={"union": -INF})
    assert get_job(session_factory, job_id).result == {"union": None, "nonfinite": ["union"]}


def test_a_job_that_cannot_be_processed_is_isolated_then_failed(
    session_factory: sessionmaker[Session], tmp_path: Path, db_url: str
) -> None:
    settings = make_test_settings(tmp_path / "home2", database_url=db_url, max_concurrent_jobs=2)
    backend = BrokenInfo()
    clock = ManualClock()
    d = Dispatcher(session_factory, backend, settings, policy=POLICY, clock=clock)
    bad = create_job(session_factory)
    d.tick()
    bad_ray = get_job(session_factory, bad).ray_job_id
    backend.broken.add(bad_ray)
    good = create_job(session_factory)
    assert d.tick(), "one job's error does not fail the pass"
    assert get_job(session_factory, good).status == "dispatching", "claims went on"
    health = d.health()
    assert health["job_errors"] == 1
    assert "boom" in health["last_error"] and f"job {bad}" in health["last_error"]
    d.tick()  # backed off: not retried at once
    assert d.health()["job_errors"] == 1
    ray_job(backend, session_factory, good).status = "RUNNING"
    for _ in range(2):
        clock.advance(60.0)
        d.tick()
    job = get_job(session_factory, bad)
    assert job.status == "failed"
    assert "could not watch this job (3 errors in a row): RuntimeError: boom" in job.error
    assert backend.jobs[bad_ray].stop_calls == 1, "its Ray job is stopped"
    assert get_job(session_factory, good).status == "running", "the other job was watched all along"


def test_a_programming_error_in_a_pass_is_recorded_and_the_next_pass_runs(
    session_factory: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Dispatcher(session_factory, FakeBackend(), settings, policy=POLICY, clock=ManualClock())
    create_job(session_factory)

    def broken() -> None:
        raise TypeError("a bug outside any job")

    monkeypatch.setattr(d.submitter, "claim", broken)
    assert d.tick() is False
    health = d.health()
    assert health["consecutive_errors"] == 1 and "TypeError" in health["last_error"]
    assert health["passes"] == 0 and health["last_pass_age_s"] is None
    monkeypatch.undo()
    assert d.tick() is True
    assert d.health()["consecutive_errors"] == 0 and d.health()["passes"] == 1
