"""Engine and session factory. SQLite gets WAL + a busy timeout so the API and the dispatcher
(separate connections, separate threads) can write concurrently without 'database is locked'."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


# ------------------------------------------------------------------- bounded waits (PostgreSQL)

# (connect, answer) seconds; None until bound_waits() is called.
_WAIT_LIMITS: tuple[float, float] | None = None


def bound_waits(*, connect_s: float, answer_s: float) -> None:
    """Bound every wait of a psycopg2 connection in this process: ``connect_s`` to connect,
    ``answer_s`` for the answer to a statement (set it above the server's statement_timeout, so a
    slow query ends with the server's own error first).

    libpq alone waits forever on a connection that stops answering (a frozen server, a network
    path that drops everything): ``connect_timeout`` covers connecting only, ``statement_timeout``
    is enforced by the server itself, and TCP keepalives do not fire while a request is unanswered.
    So a pooled connection's ping or query would hang its request (and the dispatcher) for as long
    as the outage lasts. Here, a connection past its deadline is shut down (``shutdown(2)`` on its
    socket): libpq fails at once with "server closed the connection unexpectedly", an
    OperationalError the pool discards and the API answers with 503.

    Installed as psycopg2's wait callback, which is process-wide (libpq then runs non-blocking, as
    with ``psycopg2.extras.wait_select``; COPY and large objects are unavailable); the limits are
    the latest call's.
    """
    import psycopg2.extensions

    global _WAIT_LIMITS
    _WAIT_LIMITS = (connect_s, answer_s)
    psycopg2.extensions.set_wait_callback(_wait_with_deadline)


def _wait_with_deadline(conn: Any) -> None:
    import psycopg2
    import psycopg2.extensions as ext

    limits = _WAIT_LIMITS or (float("inf"), float("inf"))
    connecting = conn.status not in (ext.STATUS_READY, ext.STATUS_BEGIN, ext.STATUS_PREPARED)
    deadline = time.monotonic() + (limits[0] if connecting else limits[1])
    severed = False
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if severed:  # libpq did not notice the shutdown: give up on the connection ourselves
                raise psycopg2.OperationalError("the database did not answer in time; connection closed")
            _sever(conn.fileno())  # the next poll() fails with the connection lost
            severed = True
            continue
        if state not in (ext.POLL_READ, ext.POLL_WRITE):
            raise psycopg2.OperationalError(f"unexpected state from poll(): {state}")
        waiter = select.poll()
        waiter.register(conn.fileno(), select.POLLIN if state == ext.POLL_READ else select.POLLOUT)
        waiter.poll(max(1, int(remaining * 1000)))


def _sever(fd: int) -> None:
    """Shut down the socket behind ``fd`` without closing libpq's descriptor."""
    with suppress(OSError), socket.socket(fileno=socket.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


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
