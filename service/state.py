"""The job state machine, enforced here and nowhere else.

queued -> dispatching -> running -> succeeded | failed | cancelled, with cancelling in between when a
cancel arrives while Ray runs the job, and failed/cancelled -> queued on retry. A transition to the
current status is a no-op (the driver and the dispatcher may both report the same fact).
"""

from __future__ import annotations

from workers.contract.status import TERMINAL, JobStatus

__all__ = ["ACTIVE", "RETRYABLE", "TERMINAL", "TRANSITIONS", "IllegalTransition", "JobStatus"]

S = JobStatus

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.DISPATCHING, S.CANCELLED}),
    # A job may finish before anyone observed it running (tiny jobs, reconciliation after downtime);
    # a failed submission goes back to the queue.
    S.DISPATCHING: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLING, S.CANCELLED, S.QUEUED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLING}),
    # The job may complete (or crash) before the stop request takes effect.
    S.CANCELLING: frozenset({S.CANCELLED, S.SUCCEEDED, S.FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
}

# Jobs that hold (or are about to hold) Ray resources: what max_concurrent_jobs counts.
ACTIVE: frozenset[JobStatus] = frozenset({S.DISPATCHING, S.RUNNING, S.CANCELLING})
RETRYABLE: frozenset[JobStatus] = frozenset({S.FAILED, S.CANCELLED})


class IllegalTransition(Exception):
    """A transition the state machine forbids; the API maps it to 409."""

    def __init__(
        self, job_id: int | None, current: str, target: str, detail: str = "", *, message: str | None = None
    ) -> None:
        self.job_id = job_id
        self.current = current
        self.target = target
        msg = message or f"job {job_id} is {current}; cannot go to {target}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


def parse_status(value: str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        expected = ", ".join(s.value for s in S)
        raise ValueError(f"unknown status {value!r}; expected one of {expected}") from None


def can_transition(current: str, target: str) -> bool:
    cur, tgt = parse_status(current), parse_status(target)
    return cur == tgt or tgt in TRANSITIONS[cur]


def check_transition(current: str, target: str, *, job_id: int | None = None) -> JobStatus:
    """Return the target status, or raise IllegalTransition."""
    tgt = parse_status(target)
    if not can_transition(current, target):
        raise IllegalTransition(job_id, current, tgt.value)
    return tgt


def is_terminal(status: str) -> bool:
    return parse_status(status) in TERMINAL
