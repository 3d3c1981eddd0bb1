"""``jobs.not_before``: an automatic retry is queued at once but claimed only after a delay.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

A job that fails with retries left goes straight back to ``queued`` (so a client waiting for a
terminal status does not stop at a failure that is about to be retried) with ``not_before`` =
its failure time + ``RAMP_RETRY_DELAY_S``; the claim skips queued jobs whose ``not_before`` is
still ahead. Why a delay at all: a lost Ray node fails the run within seconds, but the GCS
declares the node dead only after its health checks miss, and until then a retry can be placed on
the dead node and fail again (docs/service.md, "Retries and resume"). Nullable, no default: every
existing row is claimable as before. ADD / DROP COLUMN only (no table rebuild either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Not a batch (copy-and-move) rebuild: on SQLite that drops the jobs table, and its children's
    # ON DELETE CASCADE would empty job_events, trials and idempotency_keys with it. SQLite >= 3.35
    # drops a plain column in place.
    op.drop_column("jobs", "not_before")
