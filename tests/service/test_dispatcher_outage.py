"""The dispatcher survives a database outage (PostgreSQL reached through a TCP proxy the test cuts
and restores): passes fail, are recorded in ``health()`` and logged once, the loop keeps going and
claims jobs again once the database is back; a start-up reconciliation that cannot reach the
database is retried until it can."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import session_factory_on
from dispatch_support import TcpProxy, create_job, get_job
from exec_support import FakeBackend, make_test_settings, wait_for
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import make_engine, make_session_factory
from service.dispatcher import Dispatcher, DispatchPolicy
from service.jobs import transitions

POLICY = DispatchPolicy(interval_s=0.05, submit_grace_s=0.0, warn_every_s=3600.0, retry_delay_s=0.0)


@pytest.fixture
def pg(pg_empty_url: str) -> str:
    return pg_empty_url


@pytest.fixture
def proxy(pg: str) -> Iterator[TcpProxy]:
    url = make_url(pg)
    p = TcpProxy(url.host or "127.0.0.1", url.port or 5432).open()
    yield p
    p.close()


@pytest.fixture
def direct(pg: str) -> Iterator[sessionmaker[Session]]:
    """The test's own way to the database, not through the proxy."""
    with session_factory_on(pg) as factory:
        yield factory


@pytest.fixture
def dispatcher(pg: str, proxy: TcpProxy, tmp_path: Path) -> Iterator[Dispatcher]:
    url = make_url(pg).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    # connect_timeout: a cut path must fail a pass quickly rather than hang it.
    engine = make_engine(url, connect_args={"connect_timeout": 5})
    settings = make_test_settings(tmp_path / "home", database_url=url, max_concurrent_jobs=4)
    d = Dispatcher(make_session_factory(engine), FakeBackend(), settings, policy=POLICY, claimer="outage")
    yield d
    d.stop(timeout_s=30)
    engine.dispose()


def _status(factory: sessionmaker[Session], job_id: int) -> str:
    return get_job(factory, job_id).status


def test_the_dispatcher_keeps_going_through_a_database_outage(
    dispatcher: Dispatcher, proxy: TcpProxy, direct: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    first = create_job(direct)
    dispatcher.start()
    wait_for(lambda: _status(direct, first) == "dispatching", 60, "the first job to be claimed")
    wait_for(lambda: dispatcher.health()["reconciled"], 30, "the reconciliation")
    caplog.set_level(logging.WARNING, logger="service.dispatcher")
    proxy.close()  # the database is gone for the dispatcher
    second = create_job(direct)
    wait_for(lambda: dispatcher.health()["consecutive_errors"] >= 5, 120, "passes to fail")
    health = dispatcher.health()
    assert health["running"] and "OperationalError" in health["last_error"]
    assert _status(direct, second) == "queued"
    failures = [r for r in caplog.records if "pass failed" in r.getMessage()]
    assert len(failures) == 1, "repeated failures are logged once per warn_every_s"
    passes = health["passes"]
    proxy.open()  # back
    wait_for(lambda: _status(direct, second) == "dispatching", 120, "a claim after the outage")
    wait_for(lambda: dispatcher.health()["consecutive_errors"] == 0, 30, "a completed pass")
    health = dispatcher.health()
    assert health["passes"] > passes and health["last_pass_age_s"] is not None
    assert health["last_pass_age_s"] < 30
    assert any("recovered" in r.getMessage() for r in caplog.records)


def test_a_start_up_reconciliation_without_a_database_is_retried(
    dispatcher: Dispatcher, proxy: TcpProxy, direct: sessionmaker[Session]
) -> None:
    job_id = create_job(direct)
    with direct() as s:  # a job a crashed process had claimed: reconciliation re-queues it
        transitions.claim_queued_jobs(s, limit=1, claimer="crashed-process")
    proxy.close()
    dispatcher.start()
    wait_for(lambda: dispatcher.health()["consecutive_errors"] >= 2, 60, "reconciliation attempts")
    health = dispatcher.health()
    assert not health["reconciled"] and "start-up reconciliation" in health["last_error"]
    assert health["passes"] == 0
    proxy.open()
    wait_for(lambda: dispatcher.health()["reconciled"], 60, "the reconciliation to succeed")
    wait_for(lambda: get_job(direct, job_id).claimed_by == "outage", 60, "the job re-queued and claimed")
