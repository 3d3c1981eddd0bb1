"""Alembic migrations create exactly the ORM's schema, on SQLite and PostgreSQL, from any cwd."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from service.db import migrate
from service.db.base import Base
from service.db.models import Job  # noqa: F401  (registers the tables)
from service.db.session import make_engine

REPO = Path(__file__).resolve().parents[2]
TABLES = {"jobs", "job_events", "api_tokens", "idempotency_keys", "trials"}


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
    name = f"ramp_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(pg_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        assert _tables(url) == TABLES
        assert _diff(url) == []
        migrate.downgrade(url, "base")
        assert _tables(url) == set()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
