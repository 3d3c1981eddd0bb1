"""Tenancy: jobs.owner (backfilled from the submitting token's name) and api_tokens.expires_at.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Only native ALTER TABLE ... ADD/DROP COLUMN and CREATE/DROP INDEX, no batch-mode table rebuild:
a rebuild drops ``jobs``, and with SQLite's foreign keys on that cascades into every job's events,
trials and idempotency keys. That is why ``owner`` is added NOT NULL with a server default
(SQLite can add such a column in place) and keeps the default (dropping it would be a rebuild).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Jobs with no (surviving) token belong to the admin: the name service.main gives its own token.
DEFAULT_OWNER = "admin"


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("owner", sa.String(length=128), nullable=False, server_default=DEFAULT_OWNER),
    )
    op.execute(
        "UPDATE jobs SET owner = (SELECT t.name FROM api_tokens t WHERE t.id = jobs.token_id) "
        "WHERE EXISTS (SELECT 1 FROM api_tokens t WHERE t.id = jobs.token_id)"
    )
    op.create_index("ix_jobs_owner_id", "jobs", ["owner", "id"], unique=False)
    op.add_column("api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("api_tokens", "expires_at")
    op.drop_index("ix_jobs_owner_id", table_name="jobs")
    op.drop_column("jobs", "owner")
