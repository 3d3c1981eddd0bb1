"""Comparing evaluations: which differences are real. Torch-free (the API, the pages and the CLI
use it).

Two results are compared only when they were scored on the same points (equal
``per_sample.points`` digests, see ``samples``): then, per accuracy (clean, each norm, union, the
unseen suite's ``unseen_union``), the
difference with McNemar's exact test on the per-sample flags. A difference is called
``significant`` at p < 0.05, and ``decidable`` only when its discordant points could have reached
that at all (6 or more; fewer: inconclusive, not "no difference"); with several pairs the
Holm-adjusted p is given too (``p_holm``, over every pair and metric of the report), for a reader
who wants the family-wise rate.

Results that cannot be paired (no per-sample flags, other points) are named in ``notes``, and so
are pairs whose numbers come from different precision schemes or suites: a table that puts them
side by side must say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.contract.metrics import ACCURACY_KEYS, precision_label
from workers.contract.samples import read_per_sample
from workers.contract.stats import SIGNIFICANCE, decidable, discordant, holm, mcnemar_exact
from workers.contract.unseen import UNSEEN_UNION

PAIRED_KEYS: tuple[str, ...] = (*ACCURACY_KEYS, UNSEEN_UNION)


@dataclass(frozen=True)
class PairedDifference:
    """``a`` minus ``b`` on ``metric`` over the same ``n`` points."""

    a: str
    b: str
    metric: str
    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int  # points right in a and wrong in b
    only_b: int
    p: float
    p_holm: float = 1.0

    @property
    def difference(self) -> float:
        return self.accuracy_a - self.accuracy_b

    @property
    def significant(self) -> bool:
        return self.p < SIGNIFICANCE

    @property
    def decidable(self) -> bool:
        """Enough discordant points for the test to have been able to reject at all."""
        return decidable(self.only_a, self.only_b)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"difference": self.difference, "significant": self.significant,
                               "decidable": self.decidable}


@dataclass
class Comparison:
    pairs: list[PairedDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"pairs": [p.as_dict() for p in self.pairs], "notes": list(self.notes),
                "comparisons": len(self.pairs), "alpha": SIGNIFICANCE}


def _suite_name(metrics: Mapping[str, Any]) -> str:
    suite = metrics.get("suite")
    return ",".join(map(str, suite)) if isinstance(suite, list) else str(suite)


def compare_results(results: Sequence[tuple[str, Mapping[str, Any] | None]]) -> Comparison:
    """Paired differences between every two of ``results`` ((name, metrics) in display order)."""
    out = Comparison()
    flags: dict[str, tuple[str, dict[str, list[bool]]]] = {}
    for name, metrics in results:
        read = read_per_sample(metrics)
        if read is None:
            out.notes.append(f"{name}: no per-sample flags, so no paired test")
        else:
            flags[name] = read
    named = [(name, m) for name, m in results if name in flags and m is not None]
    for i, (name_a, metrics_a) in enumerate(named):
        for name_b, metrics_b in named[i + 1:]:
            points_a, flags_a = flags[name_a]
            points_b, flags_b = flags[name_b]
            if points_a != points_b:
                out.notes.append(f"{name_a} and {name_b} were evaluated on different points: "
                                 "no paired test")
                continue
            out.notes += _mixed(name_a, metrics_a, name_b, metrics_b)
            for metric in PAIRED_KEYS:
                if metric not in flags_a or metric not in flags_b:
                    continue
                a, b = flags_a[metric], flags_b[metric]
                only_a, only_b = discordant(a, b)
                out.pairs.append(PairedDifference(
                    name_a, name_b, metric, len(a), sum(a) / len(a) if a else 0.0,
                    sum(b) / len(b) if b else 0.0, only_a, only_b, mcnemar_exact(only_a, only_b)))
    adjusted = holm([p.p for p in out.pairs])
    out.pairs = [PairedDifference(**{**asdict(p), "p_holm": q})
                 for p, q in zip(out.pairs, adjusted, strict=True)]
    return out


def _mixed(name_a: str, a: Mapping[str, Any], name_b: str, b: Mapping[str, Any]) -> list[str]:
    notes = []
    if precision_label(a) != precision_label(b):
        notes.append(f"{name_a} and {name_b} come from different precision schemes "
                     f"({precision_label(a)} vs {precision_label(b)})")
    if _suite_name(a) != _suite_name(b):
        notes.append(f"{name_a} and {name_b} come from different suites "
                     f"({_suite_name(a)} vs {_suite_name(b)})")
    if a.get("epsilons") != b.get("epsilons"):
        notes.append(f"{name_a} and {name_b} were attacked at different radii")
    return notes
