"""Repository functions against SQLite and PostgreSQL (every test runs on both via ``db_url``)."""

from __future__ import annotations

import threading
from datetime import UTC

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from service.auth import tokens
from service.core.security import generate_token, hash_token
from service.db.models import ApiToken, IdempotencyKey, Job, JobEvent
from service.events import store as events
from service.jobs import store, transitions
from service.state import IllegalTransition

SPEC = {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "epochs": 1}


def _job(session: Session, **spec_overrides: object) -> Job:
    spec = SPEC | spec_overrides
    return store.create_job(session, spec, kind=str(spec["kind"]), idempotency_key=None, token_id=None)


def test_create_and_get_round_trip_json_and_utc_timestamps(session: Session) -> None:
    spec = SPEC | {"params": {"ramp.lambda": 5.0}, "epsilons": {"linf": 0.3}}
    job = store.create_job(session, spec, kind="train", idempotency_key=None, token_id=None)
    session.expunge_all()
    got = store.get_job(session, job.id)
    assert got.spec == spec and got.kind == "train" and got.method == "ramp"
    assert got.status == "queued" and got.attempt == 1
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset().total_seconds() == 0
    assert got.queued_at is not None and got.queued_at.tzinfo == UTC
    with pytest.raises(store.JobNotFound, match="job 999 not found"):
        store.get_job(session, 999)


def test_list_filters_and_cursor_pagination_visit_every_job_once(session: Session) -> None:
    ids = [_job(session, method="ramp" if i % 2 else "eat").id for i in range(7)]
    ev = store.create_job(session, {"kind": "eval", "checkpoint": "/c"}, kind="eval", idempotency_key=None,
                         token_id=None)
    seen, cursor = [], None
    while True:
        page, cursor = store.list_jobs(session, cursor=cursor, limit=3)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == sorted([*ids, ev.id], reverse=True)
    ramp, nxt = store.list_jobs(session, method="ramp", limit=50)
    assert nxt is None and {j.id for j in ramp} == {i for n, i in enumerate(ids) if n % 2}
    assert [j.id for j in store.list_jobs(session, kind="eval")[0]] == [ev.id]
    transitions.request_cancel(session, ids[0])
    assert [j.id for j in store.list_jobs(session, status=["cancelled"])[0]] == [ids[0]]
    with pytest.raises(store.InvalidCursor):
        store.list_jobs(session, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="unknown status"):
        store.list_jobs(session, status="paused")


def test_idempotency_key_returns_the_first_job_and_rejects_a_different_body(session: Session) -> None:
    kw = {"kind": "train", "idempotency_key": "k1", "token_id": None}
    a, created = store.create_job_idempotent(session, SPEC, **kw)
    b, created_again = store.create_job_idempotent(session, SPEC, **kw)
    assert created and not created_again and a.id == b.id
    with pytest.raises(store.IdempotencyConflict, match="different request body") as info:
        store.create_job(session, SPEC | {"epochs": 2}, kind="train", idempotency_key="k1", token_id=None)
    assert info.value.job_id == a.id
    # The key is scoped per token: another client's identical key is a different job.
    token = tokens.create_api_token(session, "other", generate_token())
    c = store.create_job(session, SPEC, kind="train", idempotency_key="k1", token_id=token.id)
    assert c.id != a.id
    assert session.scalar(select(func.count()).select_from(Job)) == 2


def test_idempotency_under_a_race_creates_exactly_one_job(session_factory: sessionmaker[Session]) -> None:
    n = 8
    barrier = threading.Barrier(n)
    results: list[int] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            with session_factory() as s:
                barrier.wait()
                job = store.create_job(s, SPEC, kind="train", idempotency_key="race", token_id=None)
                results.append(job.id)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == n and len(set(results)) == 1
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 1


def test_transitions_stamp_times_record_events_and_refuse_illegal_moves(session: Session) -> None:
    job = _job(session)
    [claimed] = transitions.claim_queued_jobs(session, limit=10, claimer="d1")
    assert claimed.id == job.id and claimed.status == "dispatching" and claimed.claimed_by == "d1"
    job = transitions.transition(session, job.id, "running", ray_job_id="ray-1")
    assert job.ray_job_id == "ray-1" and job.running_at is not None and job.running_at >= job.dispatching_at
    same = transitions.transition(session, job.id, "running")
    assert same.running_at == job.running_at  # same-status: no-op
    # ... that still records a Ray job id learnt later (e.g. the dispatcher after the driver).
    assert transitions.transition(session, job.id, "running", ray_job_id="ray-1b").ray_job_id == "ray-1b"
    job = transitions.transition(session, job.id, "failed", error="OOM in epoch 3")
    assert job.error == "OOM in epoch 3" and job.failed_at is not None
    with pytest.raises(IllegalTransition, match="job .* is failed; cannot go to running"):
        transitions.transition(session, job.id, "running")
    statuses = [(e.data["from"], e.data["to"]) for e in events.list_events(session, job.id, type="status")]
    assert statuses == [("queued", "dispatching"), ("dispatching", "running"), ("running", "failed")]


def test_cancel_paths(session: Session) -> None:
    queued = _job(session)
    assert transitions.request_cancel(session, queued.id).status == "cancelled"
    running = _job(session)
    transitions.claim_queued_jobs(session, limit=1, claimer="d")
    transitions.transition(session, running.id, "running")
    assert transitions.request_cancel(session, running.id).status == "cancelling"
    assert transitions.request_cancel(session, running.id).status == "cancelling"  # repeated: no-op
    assert transitions.transition(session, running.id, "cancelled").cancelled_at is not None
    done = _job(session)
    transitions.claim_queued_jobs(session, limit=1, claimer="d")
    transitions.transition(session, done.id, "succeeded")
    with pytest.raises(IllegalTransition, match="already finished with status succeeded"):
        transitions.request_cancel(session, done.id)


def test_retry_starts_a_clean_new_attempt(session: Session) -> None:
    job = _job(session)
    transitions.claim_queued_jobs(session, limit=1, claimer="d")
    tokens.set_job_token(session, job.id, hash_token("t"))
    transitions.transition(session, job.id, "running", ray_job_id="ray-1")
    events.add_events(session, job.id, [{"seq": 0, "type": "progress", "data": {"step": 3}}])
    transitions.transition(session, job.id, "failed", error="boom")
    job = transitions.retry_job(session, job.id)
    assert (job.status, job.attempt) == ("queued", 2)
    assert job.ray_job_id is None and job.error is None and job.progress is None
    assert job.running_at is None and job.failed_at is None and job.driver_token_hash is None
    failed_event = [e for e in events.list_events(session, job.id, type="status") if e.data["to"] == "failed"]
    assert failed_event[0].data["error"] == "boom"  # the history survives the reset
    with pytest.raises(IllegalTransition, match="cannot retry"):
        transitions.retry_job(session, job.id)


def test_concurrent_retries_bump_the_attempt_once(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        job = _job(s)
        transitions.request_cancel(s, job.id)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def retry() -> None:
        with session_factory() as s:
            barrier.wait()
            try:
                outcomes.append(transitions.retry_job(s, job.id).status)
            except IllegalTransition:
                outcomes.append("refused")

    threads = [threading.Thread(target=retry) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["queued", "refused", "refused", "refused"]
    with session_factory() as s:
        assert store.get_job(s, job.id).attempt == 2


def test_events_are_ordered_and_deduplicated_per_attempt(session: Session) -> None:
    job = _job(session)
    batch = [
        {"seq": 0, "type": "progress", "data": {"step": 1}},
        {"seq": 1, "type": "metrics", "data": {"epoch": 0, "loss": 1.5}},
        {"seq": 2, "type": "progress", "data": {"step": 2}},
    ]
    events.add_events(session, job.id, batch)
    events.add_events(session, job.id, batch + [{"seq": 3, "type": "log", "data": {"line": "hi"}}])  # re-sent
    events.add_events(session, job.id, [{"seq": 3, "type": "log", "data": {"line": "dup"}}])
    evs = events.list_events(session, job.id)
    assert [(e.seq, e.type) for e in evs] == [(0, "progress"), (1, "metrics"), (2, "progress"), (3, "log")]
    assert evs[3].data == {"line": "hi"}
    assert store.get_job(session, job.id).progress == {"step": 2}
    assert [e.seq for e in events.list_events(session, job.id, after_seq=1)] == [2, 3]
    assert [e.seq for e in events.list_events(session, job.id, after_id=evs[1].id, limit=1)] == [2]
    assert [e.seq for e in events.list_events(session, job.id, type="metrics")] == [1]
    # A new attempt numbers its events from 0 again: they are new, not duplicates.
    events.add_events(session, job.id, [{"seq": 0, "type": "log", "data": {}, "attempt": 2}])
    assert len(events.list_events(session, job.id, attempt=2)) == 1
    with pytest.raises(ValueError, match="event type 'bogus'"):
        events.add_events(session, job.id, [{"seq": 9, "type": "bogus"}])
    with pytest.raises(store.JobNotFound):
        events.add_events(session, 12345, batch)


def test_result_active_count_and_status_queries(session: Session) -> None:
    jobs = [_job(session) for _ in range(4)]
    transitions.claim_queued_jobs(session, limit=3, claimer="d")
    transitions.transition(session, jobs[1].id, "running")
    transitions.transition(session, jobs[2].id, "running")
    transitions.request_cancel(session, jobs[2].id)
    assert store.count_active_jobs(session) == 3  # dispatching + running + cancelling
    done = transitions.transition(session, jobs[1].id, "succeeded", result={"clean": 0.9, "union": 0.4})
    assert done.result == {"clean": 0.9, "union": 0.4}  # written with the status, in one commit
    assert store.get_job(session, jobs[1].id).result == {"clean": 0.9, "union": 0.4}
    in_status = store.jobs_in_status(session, ["dispatching", "cancelling"])
    assert [j.id for j in in_status] == [jobs[0].id, jobs[2].id]
    assert store.count_jobs_by_status(session) == {
        "queued": 1, "dispatching": 1, "running": 0, "cancelling": 1, "succeeded": 1, "failed": 0,
        "cancelled": 0,
    }
    with pytest.raises(store.JobNotFound):
        transitions.transition(session, 999, "succeeded", result={})


def test_job_tokens_and_api_tokens_are_stored_hashed(session: Session) -> None:
    job, other = _job(session), _job(session)
    tokens.set_job_token(session, job.id, hash_token("secret-a"))
    assert tokens.verify_job_token(session, job.id, "secret-a")
    assert not tokens.verify_job_token(session, job.id, "secret-b")
    assert not tokens.verify_job_token(session, other.id, "secret-a")  # no token on the other job
    plain = generate_token()
    row = tokens.create_api_token(session, "ci", plain)
    assert row.token_hash == hash_token(plain) and plain not in row.token_hash
    assert tokens.authenticate_token(session, plain).id == row.id
    assert tokens.authenticate_token(session, plain + "x") is None
    stored = session.execute(text("SELECT name, token_hash FROM api_tokens")).all()
    assert all(plain not in str(r) for r in stored)
    assert tokens.ensure_api_token(session, "again", plain).id == row.id  # idempotent
    tokens.revoke_api_token(session, row.id)
    assert tokens.authenticate_token(session, plain) is None
    assert session.scalar(select(func.count()).select_from(ApiToken)) == 1


def test_deleting_a_job_cascades_to_its_events(session: Session) -> None:
    job = _job(session)
    events.add_events(session, job.id, [{"seq": 0, "type": "log", "data": {}}])
    session.execute(text("DELETE FROM jobs WHERE id = :i"), {"i": job.id})
    session.commit()
    assert session.scalar(select(func.count()).select_from(JobEvent)) == 0
