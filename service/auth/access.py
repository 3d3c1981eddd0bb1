"""Who may see and act on which job: the one place the tenancy rule lives.

A job belongs to an *owner*: the principal of the API token that submitted it (``Job.owner_id``;
``service.auth.principals``), compared by id -- a token's name decides nothing. A
non-admin caller sees and acts on its own owner's jobs only; every other job looks exactly like a
job that does not exist (``store.JobNotFound``, answered 404 with the same body), so a caller
cannot probe for other tenants' job ids. Admin tokens see and act on every job.

Callers reach jobs through ``owned_job`` (one job by id) or ``Principal.visible`` (a query over
jobs; ``service.jobs.store.list_jobs(principal=...)`` applies it), and a submission's references
to other jobs (``init_from``, an eval's ``job_id``, ``pair_models``) through ``guard_resolver``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from service.db.models import ApiToken, Job
from service.jobs import store
from service.jobs.specs import CheckpointResolver, ResolvedCheckpoint

S = TypeVar("S", bound="Select[Any]")


@dataclass(frozen=True)
class Principal:
    """The caller on whose behalf jobs are read or changed, and the rule itself (``can_see`` for
    a loaded job, ``visible`` for a query: the two must agree). Methods rather than functions so
    that ``service.jobs.store`` applies the rule without importing this module (no import cycle)."""

    owner_id: int | None  # None: a token without an owner sees no job but as an admin
    is_admin: bool = False
    token_id: int | None = None

    @classmethod
    def of(cls, token: ApiToken) -> Principal:
        return cls(owner_id=token.principal_id, is_admin=bool(token.is_admin), token_id=token.id)

    def can_see(self, job: Job) -> bool:
        return self.is_admin or (self.owner_id is not None and job.owner_id == self.owner_id)

    def visible(self, stmt: S) -> S:
        """``stmt`` (a ``select`` over ``Job``) restricted to the jobs this caller may see."""
        if self.is_admin:
            return stmt
        if self.owner_id is None:
            return stmt.where(False)
        return stmt.where(Job.owner_id == self.owner_id)


def owned_job(session: Session, principal: Principal, job_id: int) -> Job:
    """The job if ``principal`` may see it; otherwise ``store.JobNotFound``, exactly as for a job
    that does not exist (same exception, same message: no existence leak)."""
    job = store.get_job(session, job_id)
    if not principal.can_see(job):
        raise store.JobNotFound(job_id)
    return job


def guard_resolver(session: Session, principal: Principal, resolve: CheckpointResolver) -> CheckpointResolver:
    """``resolve`` (job id, trial) -> checkpoint, refusing other tenants' jobs with the very
    message a missing job gets, so a submission can neither use nor probe them."""

    def guarded(job_id: int, trial: str | None) -> ResolvedCheckpoint:
        try:
            owned_job(session, principal, job_id)
        except store.JobNotFound:
            raise ValueError(f"job {job_id} does not exist") from None
        return resolve(job_id, trial)

    return guarded
