"""Two dispatchers claiming from one queue: every job is claimed exactly once.

PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED. SQLite: conditional UPDATE ... WHERE status='queued'.
Each claimer runs its loop in its own thread with its own engine (separate connections), like two
service replicas would.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import migrate
from service.db.models import Job, JobEvent
from service.db.session import make_engine, make_session_factory
from service.jobs import store, transitions

SPEC = {"kind": "train", "method": "ramp", "dataset": "mnist-5k"}


def _claim_race(url: str, n_jobs: int, batch: int) -> dict[str, list[int]]:
    setup_engine = make_engine(url)
    with make_session_factory(setup_engine)() as s:
        s.add_all(
            [Job(kind="train", method="ramp", spec=SPEC, status="queued", attempt=1, max_retries=0)
             for _ in range(n_jobs)]
        )
        s.commit()
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def loop(name: str) -> None:
        engine = make_engine(url)
        try:
            with make_session_factory(engine)() as s:
                barrier.wait()
                while True:
                    jobs = transitions.claim_queued_jobs(s, limit=batch, claimer=name)
                    if not jobs:
                        break
                    claimed[name] += [j.id for j in jobs]
                    # A dispatcher does work between claims; without a pause SQLite's busy handler
                    # lets one thread take the whole queue and nothing would race.
                    time.sleep(0.002)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=loop, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    with make_session_factory(setup_engine)() as s:
        _check_db_state(s, claimed, n_jobs)
    setup_engine.dispose()
    return claimed


def _check_db_state(s: Session, claimed: dict[str, list[int]], n_jobs: int) -> None:
    all_ids = claimed["a"] + claimed["b"]
    counts = Counter(all_ids)
    assert len(all_ids) == n_jobs, f"claimed {len(all_ids)} of {n_jobs}"
    assert max(counts.values()) == 1, f"claimed twice: {[i for i, c in counts.items() if c > 1][:10]}"
    rows = s.execute(select(Job.id, Job.status, Job.claimed_by)).all()
    assert {r.id for r in rows} == set(all_ids)
    assert all(r.status == "dispatching" for r in rows)
    owner = {i: name for name, ids in claimed.items() for i in ids}
    assert all(owner[r.id] == r.claimed_by for r in rows)
    # Exactly one queued -> dispatching status event per job.
    per_job = s.execute(
        select(JobEvent.job_id, func.count()).where(JobEvent.type == "status").group_by(JobEvent.job_id)
    ).all()
    assert len(per_job) == n_jobs and all(n == 1 for _, n in per_job)


def test_postgres_skip_locked_claims_each_job_exactly_once(pg_empty_url: str) -> None:
    claimed = _claim_race(pg_empty_url, n_jobs=200, batch=3)
    print(f"postgres claims: a={len(claimed['a'])} b={len(claimed['b'])}")
    assert claimed["a"] and claimed["b"], "both dispatchers should have made progress"


def test_sqlite_conditional_update_claims_each_job_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    migrate.upgrade(url)
    claimed = _claim_race(url, n_jobs=120, batch=3)
    print(f"sqlite claims: a={len(claimed['a'])} b={len(claimed['b'])}")
    assert claimed["a"] and claimed["b"], "both dispatchers should have made progress"


@pytest.mark.parametrize("limit", [0, -1])
def test_claiming_nothing_is_a_no_op(tmp_path: Path, limit: int) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as s:
        store.create_job(s, SPEC, kind="train", idempotency_key=None, token_id=None)
        assert transitions.claim_queued_jobs(s, limit=limit, claimer="x") == []
        assert store.jobs_in_status(s, ["queued"])[0].status == "queued"
    engine.dispose()
