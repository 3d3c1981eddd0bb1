"""The names inside a ``metrics.json`` and what a reader needs to know about them. Torch-free.

- ``ACCURACY_KEYS``: the accuracies every evaluation reports (fractions in [0, 1]).
- Precision schemes (``metrics["precision"]``): how the robust flags were decided.
  ``fp32``: every attack and every decision in float32. ``bf16-screen+fp32``: one reduced-precision
  APGD-CE run first removes points it fools (each confirmed by a float32 forward), then the
  suite's float32 attacks run on every point it left robust, so a point is counted robust only by
  float32 attacks. ``bf16`` (results written before the scheme existed): the attacks ran in
  bfloat16 and float32 only confirmed their candidates, so a point could be counted robust by
  reduced-precision attacks alone -- such numbers may over-state robustness.
- ``intervals(metrics)``: the 95 % Wilson interval of each accuracy; written into
  ``metrics["intervals"]`` by the evaluation, derived from the accuracy and ``n`` for results that
  predate it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.contract.norms import NORMS
from workers.contract.stats import wilson_interval

ACCURACY_KEYS: tuple[str, ...] = ("clean", *NORMS, "union")
ACCURACY_LABELS: dict[str, str] = {
    "clean": "clean", "linf": "l_inf", "l2": "l_2", "l1": "l_1", "union": "union",
}

FP32 = "fp32"
SCREENED = "bf16-screen+fp32"
LEGACY_BF16 = "bf16"
PRECISION_SCHEMES: dict[str, str] = {
    FP32: "float32 attacks and decisions",
    SCREENED: "bfloat16 screen, then the float32 suite on every point it left robust",
    LEGACY_BF16: "bfloat16 attacks with float32 confirmation (before float32 decisions; may over-state "
                 "robustness)",
}
FLOAT32_DECIDED = frozenset({FP32, SCREENED})
"""Schemes in which only float32 attacks can count a point as robust."""


def precision_label(metrics: Mapping[str, Any] | None) -> str:
    """The precision scheme of a result ("-" when it does not say)."""
    if not isinstance(metrics, Mapping):
        return "-"
    value = metrics.get("precision")
    return str(value) if value is not None else "-"


def float32_decided(metrics: Mapping[str, Any] | None) -> bool:
    return precision_label(metrics) in FLOAT32_DECIDED


def _count(value: Any, n: int) -> int | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        return None
    return round(value * n)


def intervals(metrics: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    """95 % intervals of the accuracies of ``metrics``: the recorded ones, else Wilson's from the
    accuracy and ``n``; keys without a number are left out."""
    if not isinstance(metrics, Mapping):
        return {}
    recorded = metrics.get("intervals")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    n = metrics.get("n")
    out: dict[str, tuple[float, float]] = {}
    for key in ACCURACY_KEYS:
        given = recorded.get(key)
        if isinstance(given, list | tuple) and len(given) == 2 and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in given):
            out[key] = (float(given[0]), float(given[1]))
            continue
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            k = _count(metrics.get(key), n)
            if k is not None:
                out[key] = wilson_interval(k, n)
    return out


# The verdicts of the evaluation's checks (``metrics["checks"]``). A check that had too few points
# to decide says ``inconclusive``, which is never shown as a pass.
CHECK_PASSED = "passed"
CHECK_FAILED = "failed"
CHECK_INCONCLUSIVE = "inconclusive"
CHECK_STATUSES: tuple[str, ...] = (CHECK_PASSED, CHECK_FAILED, CHECK_INCONCLUSIVE)


def combined_status(statuses: list[str]) -> str:
    """failed if any failed, else inconclusive if any could not decide, else passed (none: inconclusive)."""
    if CHECK_FAILED in statuses:
        return CHECK_FAILED
    if not statuses or CHECK_INCONCLUSIVE in statuses:
        return CHECK_INCONCLUSIVE
    return CHECK_PASSED
