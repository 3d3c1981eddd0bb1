"""0005 (issue 23): the composite indexes that keep listings, the claim, /metrics and the start-up
reconciliation flat in stored history -- up and down on SQLite and PostgreSQL without losing a row,
and the queries the service really issues use them (read from EXPLAIN on the captured SQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bench.pg import throwaway_database
from service.auth.access import Principal
from service.db import migrate
from service.db.session import make_engine
from service.jobs import store, transitions

NEW = {"ix_jobs_owner_id_status_id", "ix_jobs_owner_id_kind_id", "ix_jobs_owner_id_method_id",
       "ix_jobs_kind_method_id", "ix_jobs_status_id", "ix_jobs_retry_due"}
TS = "2026-01-01 00:00:00"


@contextmanager
def _database(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}"
        return
    with throwaway_database(request.getfixturevalue("pg_url"), "ramp_mig") as url:
        yield url


def _indexes(engine: Engine) -> set[str]:
    return {ix["name"] for ix in inspect(engine).get_indexes("jobs")}


def _fill(engine: Engine, n: int) -> None:
    """``n`` jobs of two owners, mostly finished, a few queued and failed (with retries left)."""
    statuses = ["succeeded", "succeeded", "failed", "cancelled", "succeeded", "queued"]
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO principals (id, name, created_at) VALUES (1, 'a', '{TS}'), "
                          f"(2, 'b', '{TS}')"))
        conn.execute(text(
            "INSERT INTO jobs (id, kind, method, spec, status, attempt, max_retries, owner_id, created_at, "
            "updated_at) VALUES (:id, :kind, :method, '{}', :status, 1, :retries, :owner, :ts, :ts)"),
            [{"id": i, "kind": "sweep" if i % 7 == 0 else "train", "method": ["ramp", "eat"][i % 2],
              "status": statuses[i % len(statuses)], "retries": i % 3, "owner": 1 + (i % 5 == 0), "ts": TS}
             for i in range(1, n + 1)])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_0005_up_down_up_keeps_every_row_and_matches_the_models(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from test_migrations import _diff

    with _database(kind, tmp_path, request) as url:
        migrate.upgrade(url, "0004")
        engine = make_engine(url)
        try:
            _fill(engine, 60)
            assert not NEW & _indexes(engine) and "ix_jobs_status" in _indexes(engine)
            migrate.upgrade(url, "0005")
            assert _indexes(engine) >= NEW and "ix_jobs_status" not in _indexes(engine)
            # At 0005 the models differ only by 0006's column.
            assert [(d[0], d[3].name) for d in _diff(url)] == [("add_column", "not_before")]
            migrate.downgrade(url, "0004")
            assert not NEW & _indexes(engine) and "ix_jobs_status" in _indexes(engine)
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT count(*) FROM jobs")) == 60
            migrate.upgrade(url)
            assert _diff(url) == []
        finally:
            engine.dispose()


@contextmanager
def _captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", grab)


def _plans(engine: Engine, call: Any) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of every SELECT ``call(session)`` issues, one text each."""
    with _captured(engine) as seen, Session(engine) as s:
        call(s)
    plans = []
    with engine.connect() as conn:
        for statement, params in seen:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            plans.append(" | ".join(str(r[-1]) for r in rows))
    return plans


SMALL_TENANT = Principal(owner_id=2, is_admin=False)
ADMIN = Principal(owner_id=1, is_admin=True)
QUERIES: dict[str, tuple[Any, str]] = {
    "owner+status": (lambda s: store.list_jobs(s, status="succeeded", principal=SMALL_TENANT),
                     "ix_jobs_owner_id_status_id"),
    "owner+kind": (lambda s: store.list_jobs(s, kind="sweep", principal=SMALL_TENANT),
                   "ix_jobs_owner_id_kind_id"),
    "owner+method": (lambda s: store.list_jobs(s, method="eat", principal=SMALL_TENANT),
                     "ix_jobs_owner_id_method_id"),
    "admin kind+method": (lambda s: store.list_jobs(s, kind="train", method="eat", principal=ADMIN),
                          "ix_jobs_kind_method_id"),
    "claim": (lambda s: transitions.claim_queued_jobs(s, limit=2, claimer="t"), "ix_jobs_status_id"),
    "live counts": (lambda s: store.count_jobs_by_status(s, ["queued", "dispatching", "running"]),
                    "ix_jobs_status_id"),
    "reconcile": (store.retry_due_ids, "ix_jobs_retry_due"),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_the_service_s_queries_use_the_composite_indexes_on_sqlite(name: str, tmp_path: Path) -> None:
    call, index = QUERIES[name]
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    migrate.upgrade(url, "0004")
    engine = make_engine(url)
    try:
        _fill(engine, 300)
        not_before = "ALTER TABLE jobs {} COLUMN not_before"  # 0006's column: the ORM reads it
        with engine.begin() as conn:
            conn.execute(text(not_before.format("ADD") + " TIMESTAMP"))
        # Before 0005 the same query cannot name the index (the check can fail)...
        assert not any(index in p for p in _plans(engine, call))
        with engine.begin() as conn:
            conn.execute(text(not_before.format("DROP")))
        engine.dispose()  # a pooled connection would keep its cached plans of the old schema
        migrate.upgrade(url)
        engine = make_engine(url)
        plans = _plans(engine, call)
        # ...after it, the query's first SELECT searches it, and sorts nothing.
        assert f"USING INDEX {index}" in plans[0] or f"USING COVERING INDEX {index}" in plans[0], plans
        assert "TEMP B-TREE" not in plans[0], plans
    finally:
        engine.dispose()


def test_the_postgresql_claim_walks_the_queued_range_of_status_id(request: pytest.FixtureRequest) -> None:
    """A history of finished jobs and a few queued ones: the claim's SELECT is an index scan on
    (status, id), not the primary key walked past every finished job (what it was before 0005)."""
    with throwaway_database(request.getfixturevalue("pg_url"), "ramp_mig") as url:
        migrate.upgrade(url)
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO jobs (kind, spec, status, attempt, max_retries, created_at, updated_at) "
                    "SELECT 'train', '{}', CASE WHEN g > 19990 THEN 'queued' WHEN g % 10 = 8 THEN 'failed' "
                    "ELSE 'succeeded' END, 1, CASE WHEN g > 19900 THEN 1 ELSE 0 END, "
                    f"'{TS}', '{TS}' FROM generate_series(1, 20000) AS g"))
                conn.execute(text("ANALYZE jobs"))
            with engine.connect() as conn:
                plan = " ".join(r[0] for r in conn.execute(text(
                    "EXPLAIN SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 4 "
                    "FOR UPDATE SKIP LOCKED")))
            assert "ix_jobs_status_id" in plan and "Sort" not in plan, plan
            with engine.connect() as conn, _captured(engine) as seen, Session(bind=conn) as s:
                assert len(store.retry_due_ids(s)) == 9  # 19908 .. 19988
                (statement, params), = seen
                plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", params))
            assert "ix_jobs_retry_due" in plan, plan  # not the 2000 failed jobs without a retry left
        finally:
            engine.dispose()
