"""Reading a ``metrics.json``: what a reader must be warned about. Torch-free (the service and the
CLI use it).

A result carries warnings when its suite over-states robustness by design (``upper_bound``: the
``monitor`` suite), when a check failed (``checks.warnings``; see ``workers.evaluation.checks``)
or when reduced-precision attacks alone could count a point robust (the legacy ``bf16`` scheme).
Its notes (``result_notes``) say what the checks could not decide (``checks.inconclusive``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.contract.catalog import UPPER_BOUND_SUITES
from workers.contract.metrics import LEGACY_BF16, precision_label

LEGACY_PRECISION_WARNING = ("robust flags from reduced-precision (bfloat16) attacks with float32 "
                            "confirmation only, before float32 decisions: may over-state robustness; "
                            "re-evaluate for float32 numbers")
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
    if precision_label(metrics) == LEGACY_BF16:
        out.append(LEGACY_PRECISION_WARNING)
    checks = metrics.get("checks")
    if isinstance(checks, Mapping):
        out += [str(w) for w in checks.get("warnings") or []]
    return out


def result_notes(metrics: Mapping[str, Any] | None) -> list[str]:
    """What the checks could not decide (too few points), and checks from before verdicts existed."""
    if not isinstance(metrics, Mapping):
        return []
    checks = metrics.get("checks")
    if not isinstance(checks, Mapping):
        return [] if is_upper_bound(metrics) else ["no evaluation checks were recorded for this result"]
    if "status" not in checks:
        return ["legacy checks (from before verdicts had a status and a point count): they may have tested "
                "nothing"]
    return [str(line) for line in checks.get("inconclusive") or []]
