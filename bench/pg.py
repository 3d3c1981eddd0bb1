"""A throwaway PostgreSQL database, for the benchmarks and the tests alike (tests/ imports it as
``bench.pg``; the service itself does not use it)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

PG_BASE_URL = os.environ.get("RAMP_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def throwaway_database(base_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<12 hex digits>`` on ``base_url``'s server; yields its URL and
    drops it afterwards (WITH (FORCE): connections still open are cut)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(make_url(base_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
