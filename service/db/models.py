"""ORM models: jobs, their events, owners (principals), API tokens, the pages' login sessions and
idempotency keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db.base import Base, utcnow
from service.state import JobStatus

# The owner the service gives its own admin token (service.main.ensure_admin_token).
ADMIN_OWNER = "admin"
# attempt - 1 < max_retries, written as the partial index ix_jobs_retry_due's predicate: a query
# uses that index only when its WHERE repeats this very expression.
RETRY_LEFT_SQL = "attempt <= max_retries"


class Job(Base):
    __tablename__ = "jobs"
    # Every listing (a tenant's, filtered by one of status / kind / method, or an admin's by kind
    # and method), newest first with keyset cursors, is one index range scan: each index ends in
    # ``id``, so no row is read only to be filtered out and nothing is sorted. (status, id) is also
    # the dispatcher's claim and the live-status counts. Migration 0005 says what each one saved.
    __table_args__ = (
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_owner_id_status_id", "owner_id", "status", "id"),
        Index("ix_jobs_owner_id_kind_id", "owner_id", "kind", "id"),
        Index("ix_jobs_owner_id_method_id", "owner_id", "method", "id"),
        Index("ix_jobs_kind_method_id", "kind", "method", "id"),
        Index("ix_jobs_status_id", "status", "id"),
        # Jobs with a retry left: the failed ones among them are what the start-up reconciliation
        # retries (``store.retry_due_ids``), found without visiting the failed jobs that have none.
        Index("ix_jobs_retry_due", "status", "id", sqlite_where=text(RETRY_LEFT_SQL),
              postgresql_where=text(RETRY_LEFT_SQL)),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    # Denormalised from the spec so listing can filter on it with an index (None for eval).
    method: Mapped[str | None] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    status_reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    ray_job_id: Mapped[str | None] = mapped_column(String(128), index=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Latest progress event's data, kept on the row so GET /v1/jobs/{id} needs no event scan.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    driver_token_hash: Mapped[str | None] = mapped_column(String(64))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"))
    # The tenant: the submitting token's principal (every token of that owner sees the job, so a
    # rotated token keeps its jobs). None: no known submitter, visible to admins only. Access
    # rules live in service.auth.access.
    # principals.id; no FOREIGN KEY constraint (migration 0004 says why).
    owner_id: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # One timestamp per status: the latest time the job entered it.
    queued_at: Mapped[datetime | None] = mapped_column()
    dispatching_at: Mapped[datetime | None] = mapped_column()
    running_at: Mapped[datetime | None] = mapped_column()
    cancelling_at: Mapped[datetime | None] = mapped_column()
    succeeded_at: Mapped[datetime | None] = mapped_column()
    failed_at: Mapped[datetime | None] = mapped_column()
    cancelled_at: Mapped[datetime | None] = mapped_column()
    # An automatic retry's attempt is queued at once but claimed no earlier than this (migration 0006).
    not_before: Mapped[datetime | None] = mapped_column()

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )

    @property
    def timings(self) -> dict[str, datetime | None]:
        return {f"{s.value}_at": getattr(self, f"{s.value}_at") for s in JobStatus}

    def __repr__(self) -> str:
        return f"Job(id={self.id}, kind={self.kind!r}, status={self.status!r}, attempt={self.attempt})"


class JobEvent(Base):
    """Progress / metrics / log / artifact / status records of a job, ordered by ``id``.

    ``seq`` is the driver's own sequence number within an attempt (None for events the service
    records itself); (job_id, attempt, seq) is unique so re-sent batches are de-duplicated.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "seq"),
        Index("ix_job_events_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    seq: Mapped[int | None] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="events", lazy="raise")


class Principal(Base):
    """An owner of jobs: what tenancy compares (by id). Its tokens are its credentials; a second
    token for an existing owner is made deliberately (``rampctl token create --existing-owner``),
    never by re-using a name."""

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The owner's name when the token was made (shown by `rampctl token list`); identity is
    # principal_id.
    name: Mapped[str] = mapped_column(String(128))
    principal_id: Mapped[int | None] = mapped_column(Integer, index=True)  # principals.id (see 0004)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Written at most once a minute per token (service.auth.tokens.LAST_USED_RESOLUTION).
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()


class UiSession(Base):
    """A login of the web pages: the cookie holds a random session id, stored here only as its
    SHA-256. It ends at ``expires_at``, at logout (``ended_at``), or when its token is revoked or
    expires (checked on every request), and acts as its token (``token_id``)."""

    __tablename__ = "ui_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()


class IdempotencyKey(Base):
    """(scope, key) -> the job created by the first request carrying that key.

    ``scope`` is the API token id (0 when none) so two clients cannot collide on a key.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[int] = mapped_column(Integer, default=0)
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Trial(Base):
    """One trial of a sweep job (``jobs.kind == 'sweep'``): its swept values, status and results.

    ``trial_id`` is the sweep's own deterministic name (``trial_0000``, ...), unique per sweep;
    ``attempt`` is the sweep attempt that last wrote the row (a retried sweep re-runs every trial).
    ``metrics`` holds one flat dict per reported epoch, oldest first; ``checkpoint`` is relative to
    the sweep's job directory (``storage_dir/jobs/<id>/``), so it is served as an artifact.
    """

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "trial_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[str] = mapped_column(String(64))
    trial_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    final: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    checkpoint: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    tune_trial_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"Trial(job_id={self.job_id}, trial_id={self.trial_id!r}, status={self.status!r})"
