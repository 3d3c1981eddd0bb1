"""Numbers in request bodies: only what every layer below can hold.

JSON allows integers of any length, and Python reads them exactly, but the layers a job spec
passes through do not: ``float(10**400)`` raises ``OverflowError`` (the params' range checks, the
sweep domains' bounds, the pages' number formatting), and the databases' JSON and integer columns
stop at 64 bits. So a user's body is refused -- 422, naming each field -- if it holds an integer
outside the signed 64-bit range or a number that overflows to infinity (``1e400``); a job
driver's report, which is never refused for its content, gets ``null`` there instead.
"""

from __future__ import annotations

import math
from typing import Any

from service.jobs.specs import SpecError

MAX_INT = 2**63 - 1
MAX_REPORTED = 10  # issues listed in one 422


def _field(path: str, key: Any) -> str:
    return f"{path}.{key}" if len(path) < 200 else path


def out_of_range(value: Any) -> str | None:
    """Why ``value`` is a number no layer can hold, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        return f"integer out of range: at most {len(str(MAX_INT))} digits (|n| <= 2**63 - 1)"
    if isinstance(value, float) and not math.isfinite(value):
        return "number out of range: it must be finite (at most about 1.8e308)"
    return None


def check_numbers(value: Any, path: str = "body") -> None:
    """``SpecError`` naming every field (up to ``MAX_REPORTED``) that holds an unusable number.
    ``value`` has passed ``check_json_value`` (its nesting is bounded)."""
    errors: list[tuple[str, str]] = []

    def walk(v: Any, where: str) -> None:
        if len(errors) >= MAX_REPORTED:
            return
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, _field(where, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, _field(where, i))
        elif (reason := out_of_range(v)) is not None:
            errors.append((where, reason))

    walk(value, path)
    if errors:
        raise SpecError(errors)


def bounded_numbers(value: Any) -> Any:
    """``value`` with every unusable number replaced by None (drivers' reports)."""
    if isinstance(value, dict):
        return {k: bounded_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [bounded_numbers(v) for v in value]
    return None if out_of_range(value) is not None else value
