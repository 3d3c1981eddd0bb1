"""The dispatcher's timings and its one rule for which errors abort a whole pass."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.ray_backend import RayUnavailable
from workers.contract.retry import RetryPolicy


@dataclass(frozen=True)
class DispatchPolicy:
    """Timings of the watch loop (seconds) and its failure handling."""

    interval_s: float = 1.0
    restop_every_s: float = 10.0  # re-issue a stop Ray has not acted on
    cancel_timeout_s: float = 60.0  # give up waiting for Ray to confirm a stop
    # Another replica's dispatching job without a Ray id older than this has lost its submission.
    submit_grace_s: float = 30.0
    warn_every_s: float = 30.0  # rate limit of repeated warnings (Ray or the database down, a bad job)
    # While a submitted job waits for Ray's RUNNING, poll this often: it is the latency users see.
    hurry_interval_s: float = 0.1
    # Wait at most this long for the previous attempt's Ray job to stop before submitting the next
    # attempt anyway (its driver is locked out by then, its trainer by the attempt marker).
    fence_timeout_s: float = 60.0
    # An automatic retry is queued at once but claimable only this long after the failed attempt
    # ended (Settings.retry_delay_s; ``jobs.not_before``).
    retry_delay_s: float = 30.0
    max_job_errors: int = 5  # errors in a row processing one job before it is failed
    job_backoff: RetryPolicy = RetryPolicy(base_s=1.0, factor=2.0, max_s=30.0, jitter=0.2)
    reconcile_backoff: RetryPolicy = RetryPolicy(base_s=0.5, factor=2.0, max_s=10.0, jitter=0.2)


def aborts_pass(exc: BaseException) -> bool:
    """Errors of the pass rather than of one job: Ray or the database cannot be reached."""
    if isinstance(exc, RayUnavailable | OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
