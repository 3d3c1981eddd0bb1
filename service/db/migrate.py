"""Run the Alembic migrations programmatically, from any working directory.

The Alembic config is built in code (script_location = this repo's ``migrations/``), so start-up and
``rampctl db upgrade`` need no alembic.ini in the cwd; ``migrations/alembic.ini`` exists only for
developers who want to call the ``alembic`` command itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from service.db.session import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
log = logging.getLogger(__name__)


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' would be read as interpolation by configparser (passwords may contain it).
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema at ``database_url`` to ``revision``."""
    _run(command.upgrade, database_url, revision)
    log.info("database schema upgraded", extra={"revision": revision})


def downgrade(database_url: str, revision: str = "base") -> None:
    _run(command.downgrade, database_url, revision)


def _run(alembic_command: Callable[[Config, str], None], database_url: str, revision: str) -> None:
    # One transaction on our own engine (same URL handling as the service), handed to env.py.
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(database_url)
            cfg.attributes["connection"] = conn
            alembic_command(cfg, revision)
    finally:
        engine.dispose()


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {heads}")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
