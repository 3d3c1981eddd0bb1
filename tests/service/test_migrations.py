"""Alembic migrations create exactly the ORM's schema, on SQLite and PostgreSQL, from any cwd."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from bench.pg import throwaway_database
from service.db import migrate
from service.db.base import Base
from service.db.models import Job  # noqa: F401  (registers the tables)
from service.db.session import make_engine

REPO = Path(__file__).resolve().parents[2]
TABLES = {"jobs", "job_events", "api_tokens", "idempotency_keys", "trials", "principals", "ui_sessions"}


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_models_and_downgrade_drops_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    assert _diff(url) == []
    engine = make_engine(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
    migrate.upgrade(url)  # already at head: a no-op, not an error
    migrate.downgrade(url, "base")
    assert _tables(url) == set()
    migrate.upgrade(url)
    assert _tables(url) == TABLES


def test_postgres_upgrade_matches_models(pg_url: str) -> None:
    """A second, empty PostgreSQL database: migrate up, compare, down, up."""
    with throwaway_database(pg_url, "ramp_mig") as url:
        migrate.upgrade(url)
        assert _tables(url) == TABLES
        assert _diff(url) == []
        migrate.downgrade(url, "base")
        assert _tables(url) == set()


def test_upgrade_works_from_any_working_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cwd.db'}"
    code = "import sys; from service.db.migrate import upgrade; upgrade(sys.argv[1])"
    env_path = {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code, url], cwd="/", env=env_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert _tables(url) == TABLES


def test_the_alembic_command_line_uses_the_same_scripts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    alembic = Path(sys.executable).with_name("alembic")
    proc = subprocess.run(
        [str(alembic), "-c", str(REPO / "migrations" / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert _tables(url) == TABLES


# ------------------------------------------------------------------------------ 0003 tenancy


@contextmanager
def _empty_database(kind: str, tmp_path: Path, pg_url: str | None) -> Iterator[str]:
    """A new, empty database: a SQLite file, or a throwaway PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'tenancy.db'}"
        return
    assert pg_url is not None
    with throwaway_database(pg_url, "ramp_mig") as url:
        yield url


def _columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_tenancy_migration_backfills_owners_and_keeps_every_row(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """0002 -> 0003 on a database with data: owners come from the submitting token's name (else
    'admin'); up and down again lose no job, event, trial or idempotency key (SQLite would cascade
    deletes into them if the migration rebuilt the jobs table)."""
    pg_url = request.getfixturevalue("pg_url") if kind == "postgresql" else None
    with _empty_database(kind, tmp_path, pg_url) as url:
        migrate.upgrade(url, "0002")
        engine = make_engine(url)
        ts = "2026-01-01 00:00:00"
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO api_tokens (id, name, token_hash, is_admin, created_at) VALUES "
                              f"(1, 'alice', 'h1', false, '{ts}'), (2, 'bob', 'h2', false, '{ts}')"))
            for job_id, token_id in ((1, 1), (2, 2), (3, None)):
                conn.execute(text(
                    "INSERT INTO jobs (id, kind, spec, status, attempt, max_retries, token_id, created_at, "
                    f"updated_at) VALUES (:id, 'train', '{{}}', 'queued', 1, 0, :token, '{ts}', '{ts}')"
                ), {"id": job_id, "token": token_id})
            conn.execute(text("INSERT INTO job_events (job_id, attempt, type, data, created_at) "
                              f"VALUES (1, 1, 'log', '{{}}', '{ts}')"))
            conn.execute(text("INSERT INTO trials (job_id, trial_id, trial_index, attempt, status, config, "
                              f"metrics, created_at, updated_at) VALUES (2, 't0', 0, 1, 'pending', '{{}}', "
                              f"'[]', '{ts}', '{ts}')"))
            conn.execute(text("INSERT INTO idempotency_keys (scope, key, request_hash, job_id, created_at) "
                              f"VALUES (1, 'k', 'h', 1, '{ts}')"))
        counts = "SELECT (SELECT count(*) FROM job_events), (SELECT count(*) FROM trials), " \
                 "(SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM jobs)"
        try:
            migrate.upgrade(url, "0003")
            with engine.connect() as conn:
                owners = dict(conn.execute(text("SELECT id, owner FROM jobs")).all())
                assert tuple(conn.execute(text(counts)).one()) == (1, 1, 1, 3)
            assert owners == {1: "alice", 2: "bob", 3: "admin"}
            assert "expires_at" in _columns(url, "api_tokens")

            migrate.downgrade(url, "0002")
            assert "owner" not in _columns(url, "jobs") and "expires_at" not in _columns(url, "api_tokens")
            assert "owner_id" not in _columns(url, "jobs")
            with engine.connect() as conn:
                assert tuple(conn.execute(text(counts)).one()) == (1, 1, 1, 3)
            migrate.upgrade(url)  # and up again
            assert _diff(url) == []
        finally:
            engine.dispose()


# ------------------------------------------------------------------- 0004 principals, sessions


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_principals_migration_keeps_every_token_s_jobs_and_every_row(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """0003 -> 0004 on a database with data: one principal per owner name (two tokens named alice
    share one; the token-less job's 'admin' gets one too), each token joins its name's principal
    and each job its owner's, so every existing token keeps seeing exactly its jobs; up, down and
    up again lose no job, event, trial or idempotency key, and the downgrade restores the names."""
    pg_url = request.getfixturevalue("pg_url") if kind == "postgresql" else None
    with _empty_database(kind, tmp_path, pg_url) as url:
        migrate.upgrade(url, "0003")
        engine = make_engine(url)
        ts = "2026-01-01 00:00:00"
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO api_tokens (id, name, token_hash, is_admin, created_at) VALUES "
                              f"(1, 'alice', 'h1', false, '{ts}'), (2, 'bob', 'h2', false, '{ts}'), "
                              f"(3, 'alice', 'h3', false, '2026-02-01 00:00:00')"))
            rows = ((1, 1, "alice"), (2, 2, "bob"), (3, None, "admin"), (4, 3, "alice"))
            for job_id, token_id, owner in rows:
                conn.execute(text(
                    "INSERT INTO jobs (id, kind, spec, status, attempt, max_retries, token_id, owner, "
                    f"created_at, updated_at) VALUES (:id, 'train', '{{}}', 'queued', 1, 0, :token, :owner, "
                    f"'{ts}', '{ts}')"
                ), {"id": job_id, "token": token_id, "owner": owner})
            conn.execute(text("INSERT INTO job_events (job_id, attempt, type, data, created_at) "
                              f"VALUES (1, 1, 'log', '{{}}', '{ts}')"))
            conn.execute(text("INSERT INTO trials (job_id, trial_id, trial_index, attempt, status, config, "
                              f"metrics, created_at, updated_at) VALUES (2, 't0', 0, 1, 'pending', '{{}}', "
                              f"'[]', '{ts}', '{ts}')"))
            conn.execute(text("INSERT INTO idempotency_keys (scope, key, request_hash, job_id, created_at) "
                              f"VALUES (1, 'k', 'h', 1, '{ts}')"))
        counts = "SELECT (SELECT count(*) FROM job_events), (SELECT count(*) FROM trials), " \
                 "(SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM jobs), " \
                 "(SELECT count(*) FROM api_tokens)"
        try:
            migrate.upgrade(url)
            assert _diff(url) == []
            with engine.connect() as conn:
                assert tuple(conn.execute(text(counts)).one()) == (1, 1, 1, 4, 3)
                names = dict(conn.execute(text("SELECT name, id FROM principals")).all())
                assert set(names) == {"alice", "bob", "admin"}
                tokens = dict(conn.execute(text("SELECT id, principal_id FROM api_tokens")).all())
                assert tokens == {1: names["alice"], 2: names["bob"], 3: names["alice"]}
                jobs = dict(conn.execute(text("SELECT id, owner_id FROM jobs")).all())
                assert jobs == {1: names["alice"], 2: names["bob"], 3: names["admin"], 4: names["alice"]}
            assert "owner" not in _columns(url, "jobs")

            # The service's own reading of it: each token sees exactly the jobs its name owned.
            from service.auth.access import Principal
            from service.db.models import ApiToken
            from service.db.session import make_session_factory
            from service.jobs import store

            with make_session_factory(engine)() as s:
                for token_id, expected in ((1, {1, 4}), (2, {2}), (3, {1, 4})):
                    token = s.get(ApiToken, token_id)
                    assert token is not None
                    seen, _ = store.list_jobs(s, principal=Principal.of(token), limit=50)
                    assert {j.id for j in seen} == expected, token_id

            migrate.downgrade(url, "0003")
            assert {"principals", "ui_sessions"} & _tables(url) == set()
            with engine.connect() as conn:
                assert tuple(conn.execute(text(counts)).one()) == (1, 1, 1, 4, 3)
                owners = dict(conn.execute(text("SELECT id, owner FROM jobs")).all())
                assert owners == {1: "alice", 2: "bob", 3: "admin", 4: "alice"}
            migrate.upgrade(url)  # and up again
            assert _diff(url) == []
        finally:
            engine.dispose()
