"""What every part of the dispatcher shares: the database, Ray, the settings, the policy, the clock,
the loop's health, and the two database steps they all take (read a job, change its status)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.db.models import Job
from service.db.session import session_scope
from service.dispatcher.health import LoopHealth
from service.dispatcher.policy import DispatchPolicy
from service.jobs import store, transitions
from service.ray_backend import RayBackend
from service.state import ACTIVE, JobStatus

log = logging.getLogger(__name__)

S = JobStatus
ACTIVE_VALUES = frozenset(s.value for s in ACTIVE)


@dataclass
class DispatchContext:
    session_factory: sessionmaker[Session]
    backend: RayBackend
    settings: Settings
    policy: DispatchPolicy
    claimer: str
    clock: Callable[[], float]
    health: LoopHealth

    def session(self) -> contextlib.AbstractContextManager[Session]:
        return session_scope(self.session_factory)

    def get_job(self, job_id: int) -> Job:
        """The job's row as it is now (raises ``store.JobNotFound``)."""
        with self.session() as s:
            return store.get_job(s, job_id)

    def transition(
        self, job_id: int, to: str, *, error: str | None = None, reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        with self.session() as s:
            transitions.transition(s, job_id, str(to), error=error, reason=reason, result=result)
        log.info("job status", extra={"job_id": job_id, "status": str(to), "reason": reason})

    def job_dir(self, job_id: int) -> Path:
        return self.settings.job_dir(job_id)
