"""Engine and session factory. SQLite gets WAL + a busy timeout so the API and the dispatcher
(separate connections, separate threads) can write concurrently without 'database is locked'."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    url = make_url(database_url)
    if url.drivername == "postgresql":
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; we ship psycopg2.
        url = url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def engine_options(
    database_url: str, *, connect_timeout_s: float, statement_timeout_s: float, pool_timeout_s: float,
    pool_size: int, max_overflow: int,
) -> dict[str, Any]:
    """``create_engine`` keywords bounding how long a request can wait on the database: a dead
    server, an exhausted pool or a stuck statement end as an error (503) instead of a hang."""
    if make_url(database_url).get_backend_name() != "postgresql":
        return {}  # SQLite: the busy timeout above bounds lock waits; there is no server to lose
    return {
        "pool_timeout": pool_timeout_s,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "connect_args": {
            "connect_timeout": max(1, round(connect_timeout_s)),
            "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}",
            # Notice a server that vanished without closing the socket (a cut network).
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        },
    }


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: repository functions commit and hand the objects back to callers.
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that rolls back on error and always closes."""
    session = factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
