"""What an evaluation returns, and its files.

``save(out_dir)`` writes
- ``metrics.json``: ``EvalResult.metrics()`` (accuracies, their 95 % ``intervals``, the precision
  scheme, the checks, and ``per_sample``: the flags below packed with the points' digest, so two
  results can be paired from their metrics alone -- ``workers.contract.samples``);
- ``per_sample.npz``: boolean arrays over the n evaluated points, in data order:
  ``clean`` (n,), one array per evaluated norm (``linf`` / ``l2`` / ``l1``, (n,): correct clean
  AND under every attack of the suite), ``union`` (n,), and with corruptions
  ``corruption_<name>`` (5, n): correct on the corrupted point, row i = severity i + 1; with the
  ``unseen`` suite ``unseen_<attack>`` (n,) per unseen adversary and ``unseen_union`` (n,).

The ``unseen`` suite attacks no l_p ball: its norms and ``union`` are None, and ``unseen`` holds
``accuracy`` (attack -> fraction), ``mean``, ``union`` (correct under every unseen adversary, also
top-level as ``unseen_union``), their 95 % ``intervals``, the budgets ``eps``, the ``family``
they were taken for and the ``steps``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.contract.catalog import UPPER_BOUND_SUITES
from workers.contract.layout import METRICS_FILE, PER_SAMPLE_FILE
from workers.contract.metrics import FP32
from workers.contract.norms import NORMS
from workers.contract.samples import PER_SAMPLE_KEY, per_sample_block
from workers.contract.stats import wilson_interval
from workers.contract.unseen import UNSEEN_UNION
from workers.evaluation.unseen import UnseenOutcome

CORRUPTION_PREFIX = "corruption_"
UNSEEN_PREFIX = "unseen_"


def union_flags(clean: np.ndarray, robust: Iterable[np.ndarray]) -> np.ndarray:
    """Per point: correct clean AND robust under every given norm (the one definition of union)."""
    out = np.array(clean, dtype=bool, copy=True)
    for flags in robust:
        out &= flags
    return out


def _fraction(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else float("nan")


@dataclass
class CorruptionResult:
    """Per-sample correctness on each corruption: ``flags[name]`` is a bool (5, n) array."""

    flags: dict[str, np.ndarray]

    def metrics(self) -> dict[str, Any]:
        per_corruption = {
            name: {
                "mean": _fraction(f),
                "severity": {str(s + 1): _fraction(row) for s, row in enumerate(f)},
            }
            for name, f in sorted(self.flags.items())
        }
        stacked = np.stack([self.flags[name] for name in sorted(self.flags)])  # (C, 5, n)
        return {
            "mean": _fraction(stacked),
            "per_severity": {str(s + 1): _fraction(stacked[:, s]) for s in range(stacked.shape[1])},
            "per_corruption": per_corruption,
        }


@dataclass
class EvalResult:
    """Per-sample outcome of ``evaluate``. ``robust[norm]`` already includes clean correctness."""

    clean: np.ndarray
    robust: dict[str, np.ndarray]
    epsilons: dict[str, float]
    suite: str | list[str]
    seconds: float = 0.0
    # norm -> attack -> accuracy after that attack (cumulative, in suite order)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    corruptions: CorruptionResult | None = None
    precision: str = FP32  # the precision scheme (workers.contract.metrics): how robust flags were decided
    checks: dict[str, Any] | None = None  # the evaluation checks (see checks.py)
    points: str | None = None  # digest of the evaluated points (paired tests need equal digests)
    unseen: UnseenOutcome | None = None  # the unseen adversaries (the ``unseen`` suite)

    def __post_init__(self) -> None:
        self.clean = np.asarray(self.clean, dtype=bool)
        self.robust = {norm: np.asarray(f, dtype=bool) for norm, f in self.robust.items()}
        for norm, flags in self.robust.items():
            if norm not in NORMS:
                raise ValueError(f"unknown norm {norm!r} in the robust flags; expected {', '.join(NORMS)}")
            if flags.shape != self.clean.shape:
                raise ValueError(f"{norm} flags have shape {flags.shape}, clean flags {self.clean.shape}")

    @property
    def n(self) -> int:
        return int(self.clean.shape[0])

    @property
    def union(self) -> np.ndarray:
        """Correct clean AND robust under every evaluated norm, per sample."""
        return union_flags(self.clean, self.robust.values())

    def metrics(self) -> dict[str, Any]:
        """Accuracies as fractions in [0, 1]; a norm that was not evaluated is None.

        ``upper_bound`` is True for a suite that over-states robustness by design (``monitor``):
        such numbers are curves, never results.
        """
        out: dict[str, Any] = {"clean": _fraction(self.clean)}
        for norm in NORMS:
            out[norm] = _fraction(self.robust[norm]) if norm in self.robust else None
        out |= {
            # Without an l_p norm there is no l_p union (the clean flags would pose as one).
            "union": _fraction(self.union) if self.robust else None,
            "intervals": self.intervals(),
            "n": self.n,
            "epsilons": dict(self.epsilons),
            "suite": self.suite if isinstance(self.suite, str) else list(self.suite),
            "upper_bound": isinstance(self.suite, str) and self.suite in UPPER_BOUND_SUITES,
            "precision": self.precision,
            "seconds": self.seconds,
            "attacks": {norm: dict(stages) for norm, stages in self.stages.items()},
        }
        if self.checks is not None:
            out["checks"] = self.checks
        if self.points is not None:
            flags = self._flags()
            out[PER_SAMPLE_KEY] = per_sample_block(self.points, {k: v.tolist() for k, v in flags.items()})
        if self.corruptions is not None:
            out["corruptions"] = self.corruptions.metrics()
        if self.unseen is not None:
            out["unseen"] = self.unseen.metrics()
            out[UNSEEN_UNION] = out["unseen"]["union"]
        return out

    def _flags(self) -> dict[str, np.ndarray]:
        """The flags with an accuracy of their own: clean, each norm, the union (when a norm was
        evaluated) and the unseen union."""
        flags = {"clean": self.clean, **self.robust}
        if self.robust:
            flags["union"] = self.union
        if self.unseen is not None:
            flags[UNSEEN_UNION] = self.unseen.union
        return flags

    def intervals(self) -> dict[str, list[float]]:
        """The 95 % Wilson interval of clean, each evaluated norm's, union and unseen-union accuracy."""
        flags = self._flags()
        return {k: list(wilson_interval(int(f.sum()), int(f.size))) for k, f in flags.items()}

    def per_sample(self) -> dict[str, np.ndarray]:
        arrays = {"clean": self.clean, **self.robust}
        if self.robust:
            arrays["union"] = self.union
        if self.corruptions is not None:
            arrays |= {CORRUPTION_PREFIX + name: f for name, f in self.corruptions.flags.items()}
        if self.unseen is not None:
            arrays |= {UNSEEN_PREFIX + name: f for name, f in self.unseen.flags.items()}
            arrays[UNSEEN_UNION] = self.unseen.union
        return arrays

    def save(self, out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write ``metrics.json`` (the metrics, then ``extra``'s keys) and ``per_sample.npz`` into
        ``out_dir``, each once; returns the metrics path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / PER_SAMPLE_FILE, **self.per_sample())
        path = out / METRICS_FILE
        # Write-then-rename so a reader polling the directory never sees half a file.
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.metrics() | (extra or {}), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> EvalResult:
        """Read back what ``save`` wrote."""
        out = Path(out_dir)
        metrics = json.loads((out / METRICS_FILE).read_text())
        with np.load(out / PER_SAMPLE_FILE) as archive:
            arrays = {key: archive[key] for key in archive.files}
        corruption = {
            key[len(CORRUPTION_PREFIX):]: value for key, value in arrays.items()
            if key.startswith(CORRUPTION_PREFIX)
        }
        unseen = metrics.get("unseen")
        adversaries = None
        if isinstance(unseen, dict):
            names = unseen.get("eps", {})
            adversaries = UnseenOutcome(
                {name: arrays[UNSEEN_PREFIX + name] for name in names}, dict(names), unseen["family"],
                unseen["steps"])
        return cls(
            clean=arrays["clean"],
            robust={norm: arrays[norm] for norm in NORMS if norm in arrays},
            epsilons=metrics["epsilons"],
            suite=metrics["suite"],
            seconds=metrics.get("seconds", 0.0),
            stages=metrics.get("attacks", {}),
            corruptions=CorruptionResult(corruption) if corruption else None,
            precision=metrics.get("precision", FP32),
            checks=metrics.get("checks"),
            points=(metrics.get(PER_SAMPLE_KEY) or {}).get("points"),
            unseen=adversaries,
        )
