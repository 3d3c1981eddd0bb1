"""A job's statuses (the service's state machine in ``service/state.py`` moves between them)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
"""A job in one of these will not change again unless retried."""


def is_settled(status: str, attempt: int, max_retries: int) -> bool:
    """Whether a job is done for good: succeeded, cancelled, or failed with no automatic retry left.
    A failure with a retry left is requeued by the dispatcher's next pass (its attempt + 1 then
    waits out the retry delay as ``queued``): whoever waits for the outcome keeps waiting."""
    if status == JobStatus.FAILED:
        return attempt - 1 >= max_retries
    return status in TERMINAL
