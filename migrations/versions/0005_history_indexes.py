"""Composite indexes ending in ``id`` on jobs, so the costs that grow with stored history stay flat.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Measured before this revision with 50k stored jobs (bench/bench_history.py): a small tenant's
``GET /v1/jobs?status=succeeded`` walked every one of its rows through ``(owner_id, id)`` and tested
the status row by row (SQLite 6 -> 62 ms from 1k to 50k jobs); the PostgreSQL claim walked the
primary key past every finished job to find the queued ones; ``/metrics`` grouped every row by
status. Each index below serves one of those as a single range scan in ``id`` order:

* ``(owner_id, status, id)``, ``(owner_id, kind, id)``, ``(owner_id, method, id)``: a tenant's
  listing filtered by status, kind or method;
* ``(kind, method, id)``: an admin's listing filtered by kind and method;
* ``(status, id)``: the dispatcher's claim (queued, oldest first), the active jobs it watches and
  the live-status counts of ``/metrics``. It replaces the single-column ``ix_jobs_status``, its
  prefix;
* ``(status, id) WHERE attempt <= max_retries`` (partial): the failed jobs with a retry left, which
  the start-up reconciliation retries -- without it, that query visited every failed job of the
  history (SQLite, 5k failed of 50k: 41 ms; with it, well under 1 ms).

CREATE/DROP INDEX only (no table rebuild), as in 0003 and 0004.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES: dict[str, list[str]] = {
    "ix_jobs_owner_id_status_id": ["owner_id", "status", "id"],
    "ix_jobs_owner_id_kind_id": ["owner_id", "kind", "id"],
    "ix_jobs_owner_id_method_id": ["owner_id", "method", "id"],
    "ix_jobs_kind_method_id": ["kind", "method", "id"],
    "ix_jobs_status_id": ["status", "id"],
}
RETRY_LEFT_SQL = "attempt <= max_retries"  # as service.db.models (a migration does not import it)


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns, unique=False)
    op.create_index("ix_jobs_retry_due", "jobs", ["status", "id"], unique=False,
                    sqlite_where=sa.text(RETRY_LEFT_SQL), postgresql_where=sa.text(RETRY_LEFT_SQL))
    op.drop_index("ix_jobs_status", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_status", "jobs", ["status"], unique=False)
    op.drop_index("ix_jobs_retry_due", table_name="jobs")
    for name in reversed(INDEXES):
        op.drop_index(name, table_name="jobs")
