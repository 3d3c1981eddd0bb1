"""How our default suite compares with pyautoattack on the same model and points.

``agreement_with_autoattack`` runs, per norm, our ``standard`` suite and pyautoattack's own
``run_standard_evaluation`` restricted to APGD-CE + APGD-T with its standard per-norm settings (the
way a user of the package would call it), times both, and compares per-sample flags: per-norm
and union accuracy, and the gap in percentage points (ours minus theirs: positive means we
report more robustness than pyautoattack finds, the direction that must stay within a point).
Used by the agreement test (``tests/test_eval_agreement.py``) and ``bench/bench_eval.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from workers.evaluation.autoattack_suite import build_adversary
from workers.evaluation.evaluate import evaluate
from workers.evaluation.result import union_flags
from workers.evaluation.rng import isolated_rng, preserved_trace

AA_GRADIENT_ATTACKS = ("apgd-ce", "apgd-t")


@dataclass
class Agreement:
    """Per-sample robustness flags of both evaluations, and their seconds per norm."""

    clean: np.ndarray
    ours: dict[str, np.ndarray] = field(default_factory=dict)
    theirs: dict[str, np.ndarray] = field(default_factory=dict)
    ours_seconds: dict[str, float] = field(default_factory=dict)
    theirs_seconds: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"

    @property
    def n(self) -> int:
        return int(self.clean.shape[0])

    def robust_counts(self, side: str) -> dict[str, int]:
        """``side``: "ours" or "theirs"; robust points per norm and under the union."""
        flags: dict[str, np.ndarray] = getattr(self, side)
        union = union_flags(self.clean, flags.values())
        return {norm: int(f.sum()) for norm, f in flags.items()} | {"union": int(union.sum())}

    def accuracy(self, side: str) -> dict[str, float]:
        """Per-norm and union accuracy as fractions."""
        return {key: count / self.n for key, count in self.robust_counts(side).items()}

    def gap_points(self) -> dict[str, float]:
        """Ours minus theirs, in percentage points, per norm and union (from counts: exact)."""
        ours, theirs = self.robust_counts("ours"), self.robust_counts("theirs")
        return {key: 100 * (ours[key] - theirs[key]) / self.n for key in ours}

    def time_ratio(self) -> float:
        """Our seconds over theirs, all norms together."""
        return sum(self.ours_seconds.values()) / max(sum(self.theirs_seconds.values()), 1e-9)


def autoattack_flags(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seed: int = 0,
                     batch_size: int = 256) -> np.ndarray:
    """pyautoattack's APGD-CE + APGD-T (standard per-norm settings) on ``(x, y)``: robust flags
    (clean correctness included), as a user of the package would compute them."""
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    with isolated_rng(), preserved_trace():
        adversary = build_adversary(model, norm, eps, seed=seed, device=x.device, num_classes=num_classes,
                                    attacks=list(AA_GRADIENT_ATTACKS))
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    with torch.no_grad():
        return (model(x_adv).argmax(dim=1) == y).cpu().numpy()


def agreement_with_autoattack(
    model: nn.Module, x: Tensor, y: Tensor, epsilons: Mapping[str, float], *, seed: int = 0,
    batch_size: int = 256, precision: str = "auto",
) -> Agreement:
    """Both evaluations of ``model`` (eval mode, on x's device) on ``(x, y)``, norm by norm."""
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).cpu().numpy()
    out = Agreement(clean=clean)
    for norm, eps in epsilons.items():
        started = time.perf_counter()
        result = evaluate(model, (x, y), {norm: eps}, "standard", n=None, batch_size=batch_size, seed=seed,
                          precision=precision)
        out.ours_seconds[norm] = time.perf_counter() - started
        out.ours[norm] = result.robust[norm]
        out.precision = result.precision
        started = time.perf_counter()
        out.theirs[norm] = autoattack_flags(model, x, y, norm, eps, seed, batch_size)
        out.theirs_seconds[norm] = time.perf_counter() - started
    return out
