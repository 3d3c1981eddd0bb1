"""Reading a ``metrics.json``: what a reader must be warned about. Torch-free (the service and the
CLI use it).

A result carries warnings when its suite over-states robustness by design (``upper_bound``: the
``monitor`` suite) or on its data (a suite weaker than the dataset's ``result_suite``), when a check
failed (``checks.warnings``; see ``workers.evaluation.checks``) or when reduced-precision attacks
alone could count a point robust (the legacy ``bf16`` scheme). Its notes (``result_notes``) say what
the checks could not decide (``checks.inconclusive``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.contract.catalog import DATASETS, DEFAULT_SUITE, SUITE_STRENGTH, UPPER_BOUND_SUITES
from workers.contract.metrics import LEGACY_BF16, precision_label

LEGACY_PRECISION_WARNING = ("robust flags from reduced-precision (bfloat16) attacks with float32 "
                            "confirmation only, before float32 decisions: may over-state robustness; "
                            "re-evaluate for float32 numbers")
WEAK_SUITE_WARNING = ("on {dataset} the {suite!r} suite over-states l_2 and l_1 robustness (measured on "
                      "mnist-5k: full AutoAttack up to 52 points lower on l_2, a sparse search breaks "
                      "nearly every point AutoAttack leaves l_1-robust; docs/evaluation.md, 'Sparse "
                      "search'): its l_2, l_1 and union are upper bounds here; evaluate with "
                      "--suite {needed} for numbers to report")
UPPER_BOUND_WARNING = ("the {suite!r} suite is an optimistic upper bound on robustness (a cheap curve, not "
                       "a result); evaluate with --suite {needed} for numbers to report")


def is_upper_bound(metrics: Mapping[str, Any]) -> bool:
    suite = metrics.get("suite")
    return bool(metrics.get("upper_bound", isinstance(suite, str) and suite in UPPER_BOUND_SUITES))


def dataset_of(metrics: Mapping[str, Any]) -> str | None:
    """The catalog dataset a result's points come from: its ``dataset`` field, else the ``data`` label
    (``mnist-5k:test``) of results recorded before the field; None for points from a file."""
    name = metrics.get("dataset")
    if not isinstance(name, str):
        label = metrics.get("data")
        name = label.split(":", 1)[0] if isinstance(label, str) else None
    return name if name in DATASETS else None


def needed_suite(metrics: Mapping[str, Any]) -> str:
    """The weakest suite whose numbers are results on this result's data (the default elsewhere)."""
    dataset = dataset_of(metrics)
    return DATASETS[dataset].result_suite if dataset is not None else DEFAULT_SUITE


def weak_suite_warning(metrics: Mapping[str, Any]) -> str | None:
    """The warning for a result whose suite is weaker than its dataset needs (``result_suite``)."""
    suite, dataset = metrics.get("suite"), dataset_of(metrics)
    named = isinstance(suite, str) and suite in SUITE_STRENGTH
    if dataset is None or not named or is_upper_bound(metrics):
        return None  # not a named l_p suite (an attack list says what it ran), or already an upper bound
    needed = needed_suite(metrics)
    if SUITE_STRENGTH[suite] >= SUITE_STRENGTH[needed]:
        return None
    return WEAK_SUITE_WARNING.format(dataset=dataset, suite=suite, needed=needed)


def result_warnings(metrics: Mapping[str, Any] | None) -> list[str]:
    """Every warning a reader of these metrics must see, in a stable order."""
    if not isinstance(metrics, Mapping):
        return []
    out = []
    if is_upper_bound(metrics):
        out.append(UPPER_BOUND_WARNING.format(suite=metrics.get("suite"), needed=needed_suite(metrics)))
    weak = weak_suite_warning(metrics)
    if weak is not None:
        out.append(weak)
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
