"""One job's trouble stays that job's: ``JobGuard.run`` runs one job's step of a pass.

A lost race (the job changed under the dispatcher) is re-decided next pass; Ray or the database
unreachable aborts the pass (re-raised: ``policy.aborts_pass``); anything else is counted against
the job, which is backed off (``job_backoff``) while the pass goes on and, after ``max_job_errors``
errors in a row, failed with the error instead of looping on it forever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable
from typing import Any

from service.dispatcher.context import ACTIVE_VALUES, DispatchContext, S
from service.dispatcher.policy import aborts_pass
from service.jobs import store
from service.ray_backend import RayRequestError, RayUnavailable
from service.state import IllegalTransition

log = logging.getLogger(__name__)


class JobGuard:
    def __init__(
        self, ctx: DispatchContext, *, on_give_up: Callable[[int], None], rng: random.Random
    ) -> None:
        self.ctx, self.on_give_up, self.rng = ctx, on_give_up, rng
        # Per-job errors: consecutive count and the time before which the job is left alone.
        self._errors: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}

    def run(self, job_id: int, what: str, action: Callable[[], Any]) -> None:
        """Run ``action`` (one job's processing); its errors are the job's, not the pass's."""
        if self._retry_at.get(job_id, -math.inf) > self.ctx.clock():
            return
        try:
            action()
        except (IllegalTransition, store.JobNotFound) as e:
            log.info("job changed under the dispatcher; re-deciding next pass",
                     extra={"job_id": job_id, "error": str(e)})
        except Exception as e:
            if aborts_pass(e):
                raise
            self._failed(job_id, what, e)
        else:
            self._forget(job_id)

    def _forget(self, job_id: int) -> None:
        self._errors.pop(job_id, None)
        self._retry_at.pop(job_id, None)

    def _failed(self, job_id: int, what: str, exc: Exception) -> None:
        ctx = self.ctx
        n = self._errors[job_id] = self._errors.get(job_id, 0) + 1
        self._retry_at[job_id] = ctx.clock() + ctx.policy.job_backoff.delay(n - 1, self.rng.random())
        ctx.health.job_failed(job_id, what, exc, consecutive=n)
        if n >= ctx.policy.max_job_errors:
            self._give_up(job_id, what, exc, n)

    def _give_up(self, job_id: int, what: str, exc: Exception, n: int) -> None:
        """Fail a job the dispatcher keeps failing to process, rather than loop on it forever."""
        ctx = self.ctx
        self._forget(job_id)
        self.on_give_up(job_id)
        error = f"the dispatcher could not {what} this job ({n} errors in a row): {type(exc).__name__}: {exc}"
        try:
            job = ctx.get_job(job_id)
            if job.status not in ACTIVE_VALUES:
                log.error("gave up on a job", extra={"job_id": job_id, "status": job.status, "error": error})
                return
            if job.ray_job_id is not None:
                with contextlib.suppress(RayUnavailable, RayRequestError):
                    ctx.backend.stop(job.ray_job_id)
            ctx.transition(job_id, S.FAILED, error=error[:4000], reason="the dispatcher gave up on it")
        except Exception:
            log.exception("could not fail a job the dispatcher gave up on", extra={"job_id": job_id})
