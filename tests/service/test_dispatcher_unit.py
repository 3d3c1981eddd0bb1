"""The dispatcher's decisions against an in-memory Ray (FakeBackend), on SQLite and PostgreSQL.

Each test drives ``tick()`` / ``reconcile()`` by hand and moves the fake Ray jobs through Ray's
states, so every mapping (Ray state -> job transition), the retry policy, cancellation, the
concurrency limit and start-up reconciliation are checked deterministically.
"""

from __future__ import annotations

import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from exec_support import FakeBackend, make_test_settings, tiny_train_spec, wait_for
from sqlalchemy.orm import Session, sessionmaker

from service.auth import tokens
from service.core.config import Settings
from service.db.base import utcnow
from service.db.models import Job
from service.dispatcher import Dispatcher, DispatchPolicy, entrypoint_resources, submission_id
from service.events import store as events
from service.jobs import store, transitions
from workers.contract import outbox
from workers.contract.attempts import read_token_file


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_test_settings(tmp_path / "home", database_url=db_url, max_concurrent_jobs=2,
                              public_url="http://svc:8000")


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def dispatcher(
    session_factory: sessionmaker[Session], backend: FakeBackend, settings: Settings
) -> Dispatcher:
    policy = DispatchPolicy(interval_s=0.05, restop_every_s=5.0, cancel_timeout_s=30.0, submit_grace_s=0.0,
                            retry_delay_s=0.0)
    return Dispatcher(session_factory, backend, settings, policy=policy, claimer="test-claimer")


def _create(factory: sessionmaker[Session], **spec: Any) -> int:
    with factory() as s:
        return store.create_job(s, tiny_train_spec(**spec), kind="train", idempotency_key=None,
                                     token_id=None).id


def _job(factory: sessionmaker[Session], job_id: int) -> Any:
    with factory() as s:
        return store.get_job(s, job_id)


def _ray(backend: FakeBackend, factory: sessionmaker[Session], job_id: int) -> Any:
    return backend.jobs[_job(factory, job_id).ray_job_id]


def test_only_an_eval_driver_reserves_resources_itself() -> None:
    gpu = {"resources": {"num_workers": 2, "cpus_per_worker": 2, "use_gpu": True}}
    assert entrypoint_resources("eval", gpu) == (2.0, 1.0)
    assert entrypoint_resources("eval", {}) == (1.0, 0.0)
    for kind in ("train", "finetune", "sweep"):
        assert entrypoint_resources(kind, gpu) == (0.0, 0.0)


def test_submits_with_a_job_token_and_respects_the_concurrency_limit(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    ids = [_create(session_factory) for _ in range(3)]
    dispatcher.tick()
    statuses = [_job(session_factory, i).status for i in ids]
    assert statuses == ["dispatching", "dispatching", "queued"]
    assert len(backend.jobs) == 2
    first = _job(session_factory, ids[0])
    ray = backend.jobs[first.ray_job_id]
    assert first.ray_job_id == submission_id(first)
    assert shlex.split(ray.entrypoint) == [settings.driver_python, "-m", "workers.jobs.driver",
                                           "--job-id", str(ids[0])]
    assert ray.env_vars["RAMP_SERVICE_URL"] == "http://svc:8000"
    assert ray.env_vars["RAMP_STORAGE_DIR"] == str(settings.storage_dir)
    # A training driver reserves nothing: its Ray Train workers reserve their own CPUs.
    assert ray.num_cpus == 0.0 and ray.num_gpus is None
    assert ray.env_vars["RAY_JOB_STOP_WAIT_TIME_S"] == "60"
    assert ray.env_vars["RAMP_JOB_ATTEMPT"] == "1"
    token = read_token_file(ray.env_vars["RAMP_JOB_TOKEN_FILE"])
    with session_factory() as s:
        # The token in the file the Ray job is pointed at opens this job, and only this job.
        assert token and tokens.verify_job_token(s, ids[0], token)
        assert not tokens.verify_job_token(s, ids[1], token)
    # A finished job frees a slot for the third.
    ray.status = "RUNNING"
    dispatcher.tick()
    assert _job(session_factory, ids[0]).status == "running"
    assert _job(session_factory, ids[2]).status == "queued"
    ray.status = "SUCCEEDED"
    outbox.write_result(settings.job_dir(ids[0]), attempt=1, status="succeeded", metrics={"union": 0.25})
    dispatcher.tick()
    assert _job(session_factory, ids[0]).status == "succeeded"
    assert _job(session_factory, ids[2]).status == "dispatching"


def test_a_finished_ray_job_without_a_driver_report_takes_the_result_file_and_spool(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id = _create(session_factory)
    dispatcher.tick()
    spool = outbox.Spool(settings.layout.spool_dir(job_id), attempt=1)
    for seq in range(3):
        spool.append({"seq": seq, "type": "metrics", "data": {"epoch": seq + 1}, "attempt": 1})
    spool.ack(0)  # event 0 was delivered before the service went down
    with session_factory() as s:
        events.add_events(s, job_id, [{"seq": 0, "type": "metrics", "data": {"epoch": 1}, "attempt": 1}])
    metrics = {"clean": 0.9, "linf": 0.5, "l2": 0.6, "l1": 0.4, "union": 0.3}
    outbox.write_result(settings.job_dir(job_id), attempt=1, status="succeeded", metrics=metrics)
    _ray(backend, session_factory, job_id).status = "SUCCEEDED"
    dispatcher.tick()
    job = _job(session_factory, job_id)
    assert job.status == "succeeded" and job.result == metrics
    with session_factory() as s:
        epochs = [e.data["epoch"] for e in events.list_events(s, job_id, type="metrics")]
    assert epochs == [1, 2, 3]
    assert spool.acked() == 2


def test_failure_is_retried_within_max_retries_then_stays_failed(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory, max_retries=1)
    dispatcher.tick()
    first = _ray(backend, session_factory, job_id)
    first.status, first.message = "FAILED", "Job entrypoint command failed with exit code 1: OOM"
    dispatcher.tick()  # fails attempt 1, queues attempt 2, and submits it in the same pass
    job = _job(session_factory, job_id)
    assert (job.status, job.attempt) == ("dispatching", 2)
    with session_factory() as s:
        status_events = [e.data for e in events.list_events(s, job_id, type="status")]
    failed = next(e for e in status_events if e["to"] == "failed")
    assert "OOM" in failed["error"]
    second = _ray(backend, session_factory, job_id)
    assert second is not first and len(backend.jobs) == 2
    second.status = "FAILED"
    dispatcher.tick()
    job = _job(session_factory, job_id)
    assert (job.status, job.attempt) == ("failed", 2)
    assert "Ray job failed" in job.error


def test_a_failure_reported_by_the_driver_is_retried_too(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory, max_retries=2)
    dispatcher.tick()
    with session_factory() as s:
        transitions.transition(s, job_id, "running")
        transitions.transition(s, job_id, "failed", error="ValueError: diverged")
    dispatcher.tick()  # noticed as "left the active set": retried, then claimed again
    job = _job(session_factory, job_id)
    assert (job.status, job.attempt) == ("dispatching", 2)


def test_an_automatic_retry_is_queued_at_once_and_dispatched_after_the_retry_delay(
    session_factory: sessionmaker[Session], backend: FakeBackend, settings: Settings
) -> None:
    """A lost node is declared dead by Ray's GCS only after its health checks miss; a retry
    dispatched before then can be placed on the dead node. The retry is queued at once (a client
    waiting for a terminal status must not stop at it) and claimed ``retry_delay_s`` after the
    failure, by this dispatcher or, after a restart, another; a manual retry is not delayed."""
    policy = DispatchPolicy(interval_s=0.05, submit_grace_s=0.0, retry_delay_s=30.0)
    d = Dispatcher(session_factory, backend, settings, policy=policy, claimer="test-claimer")
    job_id = _create(session_factory, max_retries=1)
    d.tick()
    _ray(backend, session_factory, job_id).status = "FAILED"
    d.tick()
    job = _job(session_factory, job_id)
    assert (job.status, job.attempt) == ("queued", 2)
    assert job.not_before is not None and 29 <= (job.not_before - utcnow()).total_seconds() <= 30
    assert "automatic retry 1/1, not before" in job.status_reason
    for _ in range(3):
        d.tick()
    restarted = Dispatcher(session_factory, backend, settings, policy=policy, claimer="test-claimer")
    restarted.reconcile()
    restarted.tick()
    assert _job(session_factory, job_id).status == "queued" and len(backend.jobs) == 1
    with session_factory() as s:  # the delay has passed
        s.get(Job, job_id).not_before = utcnow() - timedelta(seconds=1)
        s.commit()
    d.tick()
    job = _job(session_factory, job_id)
    assert (job.status, job.attempt, job.not_before) == ("dispatching", 2, None)
    assert len(backend.jobs) == 2
    # A retry by hand (POST /v1/jobs/{id}/retry) is claimed at once.
    _ray(backend, session_factory, job_id).status = "FAILED"
    d.tick()
    assert _job(session_factory, job_id).status == "failed"  # no retry left
    with session_factory() as s:
        transitions.retry_job(s, job_id)
    d.tick()
    assert _job(session_factory, job_id).status == "dispatching" and len(backend.jobs) == 3


def test_cancel_stops_the_ray_job_then_records_cancelled(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory)
    dispatcher.tick()
    ray = _ray(backend, session_factory, job_id)
    ray.status = "RUNNING"
    dispatcher.tick()
    with session_factory() as s:
        assert transitions.request_cancel(s, job_id).status == "cancelling"
    dispatcher.tick()  # stop requested; the fake Ray stops at once
    assert ray.stop_calls == 1
    dispatcher.tick()
    assert _job(session_factory, job_id).status == "cancelled"


def test_cancel_gives_up_waiting_for_ray_after_the_timeout(
    session_factory: sessionmaker[Session], backend: FakeBackend, settings: Settings
) -> None:
    now = [0.0]
    policy = DispatchPolicy(restop_every_s=5.0, cancel_timeout_s=30.0, retry_delay_s=0.0)
    d = Dispatcher(session_factory, backend, settings, policy=policy, clock=lambda: now[0])
    backend.stop_takes_effect = False  # a job stuck in PENDING ignores the stop
    job_id = _create(session_factory)
    d.tick()
    with session_factory() as s:
        transitions.request_cancel(s, job_id)
    for t in (0.0, 1.0, 6.0, 20.0):
        now[0] = t
        d.tick()
    assert _ray(backend, session_factory, job_id).stop_calls == 3  # t=0, t=6, t=20
    assert _job(session_factory, job_id).status == "cancelling"
    now[0] = 31.0
    d.tick()
    job = _job(session_factory, job_id)
    assert job.status == "cancelled" and "did not confirm" in job.status_reason


def test_ray_outage_keeps_jobs_queued_and_a_refusal_fails_them(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory)
    backend.unavailable = True
    dispatcher.tick()
    job = _job(session_factory, job_id)
    assert job.status == "queued" and "Ray unavailable" in job.status_reason
    backend.unavailable = False
    backend.refuse = True
    dispatcher.tick()
    job = _job(session_factory, job_id)
    assert job.status == "failed" and "bad entrypoint" in job.error


def test_ray_outage_does_not_fail_running_jobs(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory)
    dispatcher.tick()
    _ray(backend, session_factory, job_id).status = "RUNNING"
    dispatcher.tick()
    backend.unavailable = True
    for _ in range(3):
        dispatcher.tick()
    assert _job(session_factory, job_id).status == "running"


def test_a_vanished_ray_job_fails_with_a_reason(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory)
    dispatcher.tick()
    backend.jobs.clear()  # the Ray cluster restarted and forgot its jobs
    dispatcher.tick()
    job = _job(session_factory, job_id)
    assert job.status == "failed" and "no longer exists" in job.error


def test_reconcile_adopts_lost_submissions_and_requeues_the_rest(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    """A crash between submit and recording the Ray id, seen by the next service process."""
    submitted, lost = _create(session_factory), _create(session_factory)
    with session_factory() as s:
        transitions.claim_queued_jobs(s, limit=2, claimer="crashed-process")
    backend.submit("python -m workers.jobs.driver", submission_id(_job(session_factory, submitted)))
    dispatcher.reconcile()
    assert _job(session_factory, submitted).ray_job_id == submission_id(_job(session_factory, submitted))
    assert _job(session_factory, submitted).status == "dispatching"
    assert _job(session_factory, lost).status == "queued"
    # A Ray job that ended while the service was down is finished from its result file.
    _ray(backend, session_factory, submitted).status = "SUCCEEDED"
    outbox.write_result(settings.job_dir(submitted), attempt=1, status="succeeded", metrics={"union": 0.5})
    fresh = Dispatcher(session_factory, backend, settings, claimer="restarted")
    fresh.reconcile()
    assert _job(session_factory, submitted).status == "succeeded"
    assert _job(session_factory, submitted).result == {"union": 0.5}


def test_a_resubmitted_attempt_adopts_the_ray_job_that_already_exists(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory)
    with session_factory() as s:
        sub_id = submission_id(store.get_job(s, job_id))
    backend.submit("earlier", sub_id)  # the earlier submit got through; its answer was lost
    dispatcher.tick()
    job = _job(session_factory, job_id)
    assert job.ray_job_id == sub_id and job.status == "dispatching" and len(backend.jobs) == 1


def test_cancel_before_submission_completes_without_ray(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session]
) -> None:
    job_id = _create(session_factory)
    with session_factory() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="someone-else")
        transitions.request_cancel(s, job_id)
    dispatcher.tick()
    assert _job(session_factory, job_id).status == "cancelled"
    assert backend.jobs == {}


def test_the_dispatcher_thread_runs_jobs_until_stopped(
    dispatcher: Dispatcher, backend: FakeBackend, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id = _create(session_factory)
    dispatcher.start()
    try:
        wait_for(lambda: backend.jobs, 10, "the job to reach Ray")
        ray = _ray(backend, session_factory, job_id)
        ray.status = "RUNNING"
        wait_for(lambda: _job(session_factory, job_id).status == "running", 10, "running")
        outbox.write_result(settings.job_dir(job_id), attempt=1, status="failed", error="boom: it broke")
        ray.status = "FAILED"
        wait_for(lambda: _job(session_factory, job_id).status == "failed", 10, "failed")
        assert _job(session_factory, job_id).error == "boom: it broke"
    finally:
        dispatcher.stop(timeout_s=10)
    assert dispatcher._thread is None


def test_the_execution_side_of_the_service_imports_neither_torch_nor_ray() -> None:
    import subprocess
    import sys

    code = ("import sys, service.runtime, service.dispatcher, service.ray_backend, rampctl.service_cmds, "
            "workers.contract.outbox; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"
