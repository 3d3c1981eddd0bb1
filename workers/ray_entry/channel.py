"""The driver <-> workers channel of a Ray Train run or a sweep.

Kept apart from ``runtime`` on purpose: Ray imports an actor class's module in the actor's own
process, and ``runtime`` pulls in torch and Ray Train (seconds of CPU and ~0.7 GB per process);
this module imports nothing beyond the standard library.
"""

from __future__ import annotations

from typing import Any

Event = tuple[str, Any]


class RunChannel:
    """The driver <-> workers channel: ordered events per run key, and cancel flags.

    A Ray actor (``ray.remote(num_cpus=0)``); one per training job or per sweep, its runs keyed
    by ``key``. Calls from one caller run in order, so rank 0 can send without waiting.
    """

    def __init__(self) -> None:
        self._events: dict[str, list[Event]] = {}
        self._cancelled: set[str] = set()
        self._all_cancelled = False

    def put(self, key: str, event: Event) -> None:
        self._events.setdefault(key, []).append(event)

    def take(self, key: str) -> list[Event]:
        return self._events.pop(key, [])

    def cancel(self, key: str | None = None) -> None:
        if key is None:
            self._all_cancelled = True
        else:
            self._cancelled.add(key)

    def is_cancelled(self, key: str) -> bool:
        return self._all_cancelled or key in self._cancelled

__all__ = ["Event", "RunChannel"]
