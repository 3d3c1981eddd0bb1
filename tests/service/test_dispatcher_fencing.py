"""Fencing attempts (fake Ray, SQLite and PostgreSQL): one driver token per (job, attempt), kept
out of Ray; the previous attempt's Ray job stopped before the next attempt is submitted; the
attempt marker; no Ray job left running for a job that moved on (a cancel racing a submission);
claims stamped after the jobs they take were queued."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from dispatch_support import AcceptThenTimeout, ManualClock, RecordingBackend, create_job, get_job, ray_job
from exec_support import FakeBackend, make_test_settings
from sqlalchemy.orm import Session, sessionmaker

from service.auth import tokens
from service.core.config import Settings
from service.dispatcher import Dispatcher, DispatchPolicy, submission_id
from service.events import store as events
from service.jobs import transitions
from workers.contract.attempts import read_attempt_marker, read_token_file

FAST = DispatchPolicy(interval_s=0.05, restop_every_s=5.0, cancel_timeout_s=30.0, submit_grace_s=0.0,
                      fence_timeout_s=60.0, retry_delay_s=0.0)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_test_settings(tmp_path / "home", database_url=db_url, max_concurrent_jobs=2,
                              public_url="http://svc:8000")


def _dispatcher(factory: sessionmaker[Session], backend: FakeBackend, settings: Settings, *,
                claimer: str = "replica-a", policy: DispatchPolicy = FAST,
                clock: ManualClock | None = None) -> Dispatcher:
    return Dispatcher(factory, backend, settings, policy=policy, claimer=claimer,
                      clock=clock or ManualClock())


def _token_of(ray: object) -> str:
    token = read_token_file(ray.env_vars["RAMP_JOB_TOKEN_FILE"])  # type: ignore[attr-defined]
    assert token is not None
    return token


def _valid(factory: sessionmaker[Session], job_id: int, token: str) -> bool:
    with factory() as s:
        return tokens.verify_job_token(s, job_id, token)


# ------------------------------------------------------------------------ one token per attempt


def test_the_driver_token_reaches_the_driver_in_a_private_file_never_through_ray(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = RecordingBackend()
    job_id = create_job(session_factory)
    _dispatcher(session_factory, backend, settings).tick()
    (call,) = backend.calls
    token = _token_of(ray_job(backend, session_factory, job_id))
    assert _valid(session_factory, job_id, token)
    assert token not in repr(call), "the token must not be in anything Ray's Jobs API can show"
    token_file = Path(ray_job(backend, session_factory, job_id).env_vars["RAMP_JOB_TOKEN_FILE"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    # Outside the job's directory: no artifact listing or download can reach it.
    assert settings.job_dir(job_id) not in token_file.parents
    assert token_file.parent == settings.layout.secrets_dir(job_id)


def test_a_resubmitted_attempt_keeps_the_token_its_adopted_ray_job_holds(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    """Ray accepts a submit whose answer times out: the job is re-queued, the next claim finds the
    Ray job already there and adopts it. Its driver holds the attempt's first token: still valid."""
    backend = AcceptThenTimeout(times=1)
    d = _dispatcher(session_factory, backend, settings)
    job_id = create_job(session_factory)
    d.tick()
    job = get_job(session_factory, job_id)
    assert job.status == "queued" and "Ray unavailable" in job.status_reason
    _, first = backend.only()
    token = _token_of(first)
    assert _valid(session_factory, job_id, token), "re-queued within the attempt: token kept"
    d.tick()  # claimed again: "already exists" -> adopted
    job = get_job(session_factory, job_id)
    assert (job.status, job.ray_job_id, job.attempt) == ("dispatching", submission_id(job), 1)
    assert len(backend.jobs) == 1
    assert _valid(session_factory, job_id, token), "the adopted Ray job's driver must not be locked out"


def test_a_new_attempt_gets_a_new_token_which_locks_the_old_driver_out(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend()
    d = _dispatcher(session_factory, backend, settings)
    job_id = create_job(session_factory, max_retries=1)
    d.tick()
    first = ray_job(backend, session_factory, job_id)
    old = _token_of(first)
    first.status = "FAILED"
    d.tick()  # attempt 1 failed, attempt 2 queued and submitted in the same pass
    job = get_job(session_factory, job_id)
    assert (job.status, job.attempt) == ("dispatching", 2)
    new = _token_of(ray_job(backend, session_factory, job_id))
    assert new != old
    assert not _valid(session_factory, job_id, old) and _valid(session_factory, job_id, new)
    assert not Path(first.env_vars["RAMP_JOB_TOKEN_FILE"]).exists(), "a dead token is not kept on disk"


def test_a_retry_revokes_the_old_token_at_once(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend()
    job_id = create_job(session_factory)
    _dispatcher(session_factory, backend, settings).tick()
    old = _token_of(ray_job(backend, session_factory, job_id))
    with session_factory() as s:
        transitions.transition(s, job_id, "failed", error="x")
        transitions.retry_job(s, job_id)  # a user's retry: queued, not yet claimed
    assert not _valid(session_factory, job_id, old)


# --------------------------------------------------------------- fencing the previous attempt


def test_the_next_attempt_waits_until_the_previous_ray_job_has_stopped(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend(stop_takes_effect=False)
    clock = ManualClock()
    d = _dispatcher(session_factory, backend, settings, clock=clock)
    job_id = create_job(session_factory, max_retries=1)
    d.tick()
    first = ray_job(backend, session_factory, job_id)
    first.status = "RUNNING"
    d.tick()
    marker = settings.layout.attempt_marker(job_id)
    assert read_attempt_marker(marker) == 1
    with session_factory() as s:  # the driver reports a failure; its process is still exiting
        transitions.driver_report(s, job_id, "failed", attempt=1, error="ValueError: diverged")
    d.tick()  # retried, claimed; attempt 1's Ray job is asked to stop; attempt 2 waits
    job = get_job(session_factory, job_id)
    assert (job.status, job.attempt, job.ray_job_id) == ("dispatching", 2, None)
    assert first.stop_calls == 1 and len(backend.jobs) == 1
    assert read_attempt_marker(marker) == 2, "the old attempt's trainer is fenced at once"
    clock.advance(1.0)
    d.tick()
    assert first.stop_calls == 1 and len(backend.jobs) == 1  # no stop storm, still waiting
    first.status = "STOPPED"
    d.tick()
    job = get_job(session_factory, job_id)
    assert job.ray_job_id == submission_id(job) and len(backend.jobs) == 2
    with session_factory() as s:
        kinds = [(e.data["from"], e.data["to"]) for e in events.list_events(s, job_id, type="status")]
    assert kinds.count(("queued", "dispatching")) == 2, "waiting is not bouncing through the queue"


def test_the_wait_for_the_previous_attempt_is_bounded(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend(stop_takes_effect=False)  # a Ray job stuck in PENDING ignores stops
    clock = ManualClock()
    d = _dispatcher(session_factory, backend, settings, clock=clock)
    job_id = create_job(session_factory, max_retries=1)
    d.tick()
    first = ray_job(backend, session_factory, job_id)
    with session_factory() as s:
        transitions.transition(s, job_id, "failed", error="x")
    for _ in range(3):
        d.tick()
        clock.advance(25.0)
    assert len(backend.jobs) == 1 and first.stop_calls >= 2
    d.tick()  # 75 s > fence_timeout_s: submitted anyway (the old driver's token is already dead)
    assert len(backend.jobs) == 2
    assert get_job(session_factory, job_id).attempt == 2


# -------------------------------------------------------- no Ray job left running unwatched


def test_a_cancel_racing_another_replicas_submission_stops_the_ray_job(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    """Replica A claims a job; a user cancels; replica B finds no Ray job and completes the cancel;
    then A's submission goes through. A must stop that Ray job: nobody would ever watch it."""
    backend = FakeBackend()
    a = _dispatcher(session_factory, backend, settings, claimer="replica-a")
    b = _dispatcher(session_factory, backend, settings, claimer="replica-b")  # grace 0: decides now
    job_id = create_job(session_factory)
    with session_factory() as s:
        (claimed,) = transitions.claim_queued_jobs(s, limit=1, claimer="replica-a")
        transitions.request_cancel(s, job_id)
    b.tick()
    assert get_job(session_factory, job_id).status == "cancelled"
    a.submitter.submit(claimed)  # A's submission, in flight all along, reaches Ray now
    _, ray = backend.only()
    assert ray.status == "STOPPED" and ray.stop_calls == 1
    assert get_job(session_factory, job_id).status == "cancelled"


def test_another_replicas_fresh_claim_gets_the_grace_before_a_cancel_completes(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend()
    patient = DispatchPolicy(submit_grace_s=30.0, retry_delay_s=0.0)
    b = _dispatcher(session_factory, backend, settings, claimer="replica-b", policy=patient)
    theirs, ours = create_job(session_factory), create_job(session_factory)
    with session_factory() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="replica-a")
        transitions.claim_queued_jobs(s, limit=1, claimer="replica-b")
        transitions.request_cancel(s, theirs)
        transitions.request_cancel(s, ours)
    b.tick()
    assert get_job(session_factory, theirs).status == "cancelling"  # A's submit may be in flight
    assert get_job(session_factory, ours).status == "cancelled"  # ours is not: one thread submits
    assert backend.jobs == {}


def test_a_ray_job_of_a_requeued_attempt_is_stopped_if_its_job_is_cancelled_in_the_queue(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = AcceptThenTimeout(times=1)
    d = _dispatcher(session_factory, backend, settings)
    job_id = create_job(session_factory)
    d.tick()  # Ray got it, the answer did not come back: re-queued for adoption
    assert get_job(session_factory, job_id).status == "queued"
    _, ray = backend.only()
    assert ray.status == "PENDING"
    with session_factory() as s:
        transitions.request_cancel(s, job_id)  # queued -> cancelled, no dispatcher involved
    d.tick()
    assert ray.status == "STOPPED"
    assert get_job(session_factory, job_id).status == "cancelled"


def test_ray_down_keeps_jobs_queued_without_bouncing_them_and_the_queue_drains_after(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend(unavailable=True)
    d = _dispatcher(session_factory, backend, settings)
    ids = [create_job(session_factory) for _ in range(3)]
    for _ in range(5):
        assert d.tick(), "Ray down is not a failed pass"
    assert [get_job(session_factory, i).status for i in ids] == ["queued"] * 3
    with session_factory() as s:
        claims = [e for i in ids for e in events.list_events(s, i, type="status")
                  if e.data["to"] == "dispatching"]
    assert len(claims) == 2, "claims wait for Ray to answer instead of bouncing every pass"
    assert "Ray unavailable" in (d.health()["last_error"] or "")
    backend.unavailable = False
    d.tick()
    assert [get_job(session_factory, i).status for i in ids] == ["dispatching", "dispatching", "queued"]
    assert len(backend.jobs) == 2


# ------------------------------------------------------------------------------------ claims


def test_a_claim_is_stamped_after_the_jobs_it_takes_were_queued(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer queues a job between the claim's first clock reading and its SELECT: the
    claimed job must not look dispatched before it was queued (seen on a loaded 2-core box)."""
    create_job(session_factory)
    real = transitions.utcnow
    late: list[int] = []

    def utcnow():  # noqa: ANN202
        t = real()
        if not late:
            late.append(create_job(session_factory))  # queued after t, committed before the SELECT
        return t

    monkeypatch.setattr(transitions, "utcnow", utcnow)
    with session_factory() as s:
        claimed = transitions.claim_queued_jobs(s, limit=5, claimer="c")
    assert late and claimed
    for job in claimed:
        assert job.queued_at <= job.dispatching_at, job


def test_the_driver_environment_names_the_attempt_and_its_token_file(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    backend = FakeBackend()
    job_id = create_job(session_factory)
    _dispatcher(session_factory, backend, settings).tick()
    env = ray_job(backend, session_factory, job_id).env_vars
    job = get_job(session_factory, job_id)
    assert env["RAMP_JOB_ATTEMPT"] == "1" and "RAMP_JOB_TOKEN" not in env
    assert env["RAMP_JOB_TOKEN_FILE"] == str(settings.layout.driver_token_file(job_id, submission_id(job)))
    assert os.access(env["RAMP_JOB_TOKEN_FILE"], os.R_OK)
