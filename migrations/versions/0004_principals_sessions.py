"""Owners as principals with an id (jobs.owner_id, api_tokens.principal_id) and the web pages'
server-side login sessions (ui_sessions).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Until 0003 a job's owner was a token's *name*, so any token created with that name read the
owner's jobs. Here every distinct name (of a token, or a job's owner) becomes one principal; each
token joins the principal of its name and each job the principal of its owner, so existing tokens
keep seeing exactly the jobs they saw. ``jobs.owner`` (the name) is then dropped: tenancy compares
ids only.

As in 0003, only native ALTER TABLE ... ADD/DROP COLUMN and CREATE/DROP INDEX (no batch-mode table
rebuild, which on SQLite with foreign keys on would cascade-delete every job's events, trials and
keys). That is why the two id columns are nullable and carry no FOREIGN KEY constraint: SQLite adds
a column in place only with a NULL default, and drops one (the downgrade) only if no constraint
names it. The service always sets them, and principals are never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0003's owner of jobs without a (surviving) token, restored on downgrade.
DEFAULT_OWNER = "admin"


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "principals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principals")),
        sa.UniqueConstraint("name", name=op.f("uq_principals_name")),
    )
    # One principal per name in use, created when its first token was (or now, for a job owner
    # without a token), in the order the names first appeared.
    op.execute(
        "INSERT INTO principals (name, created_at) "
        "SELECT name, MIN(created_at) FROM ("
        "  SELECT name, created_at FROM api_tokens"
        "  UNION ALL SELECT owner AS name, created_at FROM jobs"
        ") AS names GROUP BY name ORDER BY MIN(created_at), name"
    )
    op.add_column(
        "api_tokens",
        sa.Column("principal_id", sa.Integer(), nullable=True),
    )
    op.execute(
        "UPDATE api_tokens SET principal_id = (SELECT p.id FROM principals p WHERE p.name = api_tokens.name)"
    )
    op.create_index(op.f("ix_api_tokens_principal_id"), "api_tokens", ["principal_id"], unique=False)

    op.add_column("jobs", sa.Column("owner_id", sa.Integer(), nullable=True))
    op.execute("UPDATE jobs SET owner_id = (SELECT p.id FROM principals p WHERE p.name = jobs.owner)")
    op.drop_index("ix_jobs_owner_id", table_name="jobs")
    op.drop_column("jobs", "owner")
    op.create_index("ix_jobs_owner_id_id", "jobs", ["owner_id", "id"], unique=False)

    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("ended_at"),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_tokens.id"], name=op.f("fk_ui_sessions_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ui_sessions")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_ui_sessions_session_hash")),
    )
    op.create_index(op.f("ix_ui_sessions_token_id"), "ui_sessions", ["token_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_sessions_token_id"), table_name="ui_sessions")
    op.drop_table("ui_sessions")

    op.add_column(
        "jobs", sa.Column("owner", sa.String(length=128), nullable=False, server_default=DEFAULT_OWNER)
    )
    op.execute(
        "UPDATE jobs SET owner = (SELECT p.name FROM principals p WHERE p.id = jobs.owner_id) "
        "WHERE EXISTS (SELECT 1 FROM principals p WHERE p.id = jobs.owner_id)"
    )
    op.drop_index("ix_jobs_owner_id_id", table_name="jobs")
    op.drop_column("jobs", "owner_id")
    op.create_index("ix_jobs_owner_id", "jobs", ["owner", "id"], unique=False)

    # Tokens of one principal share its name already (it was theirs when they were made).
    op.drop_index(op.f("ix_api_tokens_principal_id"), table_name="api_tokens")
    op.drop_column("api_tokens", "principal_id")
    op.drop_table("principals")
