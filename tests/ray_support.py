"""Helpers for the tests that run an in-process local Ray (the `ray_local` fixture is in conftest)."""

from __future__ import annotations

import time
from typing import Any


def wait_all_cpus_free(ray: Any, timeout: float = 30.0) -> float:
    """The CPUs available once every placement group is released (or the timeout passes)."""
    total = ray.cluster_resources()["CPU"]
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0.0)
