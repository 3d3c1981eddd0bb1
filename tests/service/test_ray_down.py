"""Ray unreachable (issue 11): the Ray client fails fast and says why, submissions are accepted and
queue, /readyz answers at once with "degraded" and the reason, and once a Ray head answers at the
configured address the dispatcher connects and the queue drains to succeeded."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from service.ray_backend import RayJobsBackend, RayUnavailable
from service.ray_local import free_port

CALL_BOUND_S = 20.0  # a refused connection answers in well under a second; a hang never does


def _bounded(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread that must finish within CALL_BOUND_S (a hang fails, not blocks, the test)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(CALL_BOUND_S)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {CALL_BOUND_S} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_the_ray_client_fails_fast_and_says_why_while_ray_is_down() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = RayJobsBackend(address)
    for _ in range(3):  # the first failed connect used to deadlock this call and every later one
        assert _bounded(backend.ping) is False
        assert address in (backend.last_ping_error or "") and "unreachable" in backend.last_ping_error
    with pytest.raises(RayUnavailable, match="unreachable"):
        _bounded(backend.info, "ramp-1-a1-x")
    with pytest.raises(RayUnavailable):
        _bounded(backend.logs, "ramp-1-a1-x")
