"""The job state machine: the transition table's shape, checked exhaustively and by random walks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.state import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    can_transition,
    check_transition,
    is_terminal,
)

ALL = list(JobStatus)


def test_every_status_is_reachable_from_queued() -> None:
    seen, frontier = {JobStatus.QUEUED}, [JobStatus.QUEUED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(JobStatus)


def test_succeeded_is_final_and_terminal_states_only_leave_by_retry() -> None:
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()
    for status in TERMINAL:
        assert TRANSITIONS[status] <= {JobStatus.QUEUED}
    assert not ACTIVE & TERMINAL
    assert is_terminal("cancelled") and not is_terminal("cancelling")


@pytest.mark.parametrize(
    ("current", "target"),
    [("succeeded", "running"), ("succeeded", "cancelled"), ("queued", "running"), ("running", "queued"),
     ("cancelled", "running"), ("failed", "succeeded"), ("cancelling", "running")],
)
def test_illegal_transitions_raise_with_both_statuses(current: str, target: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(current, target, job_id=7)
    assert info.value.current == current and info.value.target == target
    assert current in str(info.value) and "7" in str(info.value)


def test_unknown_status_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown status 'paused'"):
        check_transition("queued", "paused")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ALL), max_size=30))
def test_random_walks_follow_the_table(targets: list[JobStatus]) -> None:
    """Applying random targets: accepted exactly when the table (or same-status) allows them."""
    current = JobStatus.QUEUED
    for target in targets:
        allowed = target == current or target in TRANSITIONS[current]
        assert can_transition(current, target) == allowed
        if allowed:
            assert check_transition(current, target) == target
            current = target
        else:
            with pytest.raises(IllegalTransition):
                check_transition(current, target)


def test_a_failure_with_a_retry_left_is_not_settled() -> None:
    """What event streams and waiters stop on: a failed attempt that the dispatcher will retry
    is not the job's outcome."""
    from workers.contract.status import is_settled

    assert not is_settled("failed", attempt=1, max_retries=1)
    assert is_settled("failed", attempt=2, max_retries=1)
    assert is_settled("failed", attempt=1, max_retries=0)
    assert is_settled("succeeded", attempt=1, max_retries=3) and is_settled("cancelled", 1, 3)
    assert not any(is_settled(s, 1, 0) for s in ("queued", "dispatching", "running", "cancelling"))
