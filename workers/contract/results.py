"""Reading a ``metrics.json``: what a reader must be warned about. Torch-free (the service and the
CLI use it).

A result carries warnings when its suite over-states robustness by design (``upper_bound``: the
``monitor`` suite) or when an evaluation-rigour check failed (``checks.warnings``; see
``workers.evaluation.checks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.contract.catalog import UPPER_BOUND_SUITES

UPPER_BOUND_WARNING = ("the {suite!r} suite is an optimistic upper bound on robustness (a cheap curve, not "
                       "a result); evaluate with the default suite for numbers to report")


def is_upper_bound(metrics: Mapping[str, Any]) -> bool:
    suite = metrics.get("suite")
    return bool(metrics.get("upper_bound", isinstance(suite, str) and suite in UPPER_BOUND_SUITES))


def result_warnings(metrics: Mapping[str, Any] | None) -> list[str]:
    """Every warning a reader of these metrics must see, in a stable order."""
    if not isinstance(metrics, Mapping):
        return []
    out = []
    if is_upper_bound(metrics):
        out.append(UPPER_BOUND_WARNING.format(suite=metrics.get("suite")))
    checks = metrics.get("checks")
    if isinstance(checks, Mapping):
        out += [str(w) for w in checks.get("warnings") or []]
    return out
