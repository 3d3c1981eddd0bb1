"""Service test fixtures: databases (SQLite file and a throwaway PostgreSQL database), the app
(without Ray: start_dispatcher=False) behind TestClient, and a live uvicorn server for streaming."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_support import Api, BearerAuth, app_without_ray, session_factory_on
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from bench.pg import PG_BASE_URL, throwaway_database
from service.core.config import Settings
from service.db import migrate

TABLES = ("job_events", "idempotency_keys", "jobs", "api_tokens", "principals", "ui_sessions")


def _pg_reachable(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _start_postgres() -> None:
    versions = os.listdir("/etc/postgresql")
    for version in versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
        )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    admin_url = make_url(PG_BASE_URL).set(database="postgres")
    if not _pg_reachable(admin_url.render_as_string(hide_password=False)):
        _start_postgres()
        deadline = time.monotonic() + 30
        while not _pg_reachable(admin_url.render_as_string(hide_password=False)):
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL at {admin_url} is not reachable and could not be started")
            time.sleep(0.5)
    with throwaway_database(PG_BASE_URL, "ramp_test") as url:
        migrate.upgrade(url)
        yield url


def _truncate_pg(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def pg_empty_url(pg_url: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    _truncate_pg(pg_url)
    return pg_url


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file, or the session's PostgreSQL database truncated."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "test.db")
        migrate.upgrade(url)
        return url
    url = request.getfixturevalue("pg_url")
    _truncate_pg(url)
    return url


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    with session_factory_on(db_url) as factory:
        yield factory


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s


# ------------------------------------------------------------------------------------- the app


def make_settings(home: Path, database_url: str | None = None, **overrides: object) -> Settings:
    return Settings(
        home=home,
        database_url=database_url or sqlite_url(home / "ramp.db"),
        ray_address=None,
        log_level="WARNING",
        log_json=True,
        sse_poll_interval_s=0.05,
        **({"data_roots": [Path("/data"), home / "data"]} | overrides),
    )


@pytest.fixture
def api_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
def api(api_settings: Settings) -> Iterator[Api]:
    with app_without_ray(api_settings) as a:
        yield a


@pytest.fixture
def pg_api(tmp_path: Path, pg_url: str) -> Iterator[Api]:
    """The same app on PostgreSQL."""
    _truncate_pg(pg_url)
    with app_without_ray(make_settings(tmp_path / "home", pg_url)) as a:
        yield a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer(BearerAuth):
    url: str
    settings: Settings
    token: str
    app: object


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """uvicorn in a thread (real sockets: streaming, concurrent clients)."""
    import uvicorn

    from service.main import create_app

    port = free_port()
    settings = make_settings(tmp_path / "home", port=port)
    app = create_app(settings, start_dispatcher=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    assert settings.admin_token_file is not None
    try:
        yield LiveServer(
            url=f"http://127.0.0.1:{port}",
            settings=settings,
            token=settings.admin_token_file.read_text().strip(),
            app=app,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _make_driver_token(app: object, job_id: int) -> str:
    from service.auth import tokens
    from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token

    token = generate_token(DRIVER_TOKEN_PREFIX)
    with app.state.session_factory() as s:  # type: ignore[attr-defined]
        tokens.set_job_token(s, job_id, hash_token(token))
    return token


@pytest.fixture
def driver_token():  # noqa: ANN201
    """driver_token(app, job_id) -> token: what the dispatcher does at submission (hash on the row)."""
    return _make_driver_token

