"""Unseen adversaries: their names, the budget of each per dataset family, and where each number
comes from. Torch-free (the CLI, the service and the evaluation share it).

The attacks are those of Kang et al. 2019, "Testing Robustness Against Unforeseen Adversaries"
(ddkang/advex-uar); ``workers.attacks.unseen`` implements them and must register exactly
``UNSEEN_ATTACKS``. Units of ``eps`` (all on images in [0, 1]):

- ``jpeg-linf`` / ``jpeg-l1``: the l_inf / l_1 size of the variable ``v`` whose half moves each
  quantised 8x8 DCT coefficient (JPEG quality-50 tables), as in the reference (it adds
  ``eps * (u - 1/2)`` with ``u`` in [0, 1] to the quantised coefficients); ``jpeg-l1`` also caps
  every coordinate at 2, as the reference does;
- ``fog``: the blend strength of the fog map (the reference's pixel-scale strength / 255);
- ``snow``: the strength the snow layer is added with;
- ``gabor``: the strength the [0, 1] Gabor noise is added with (the reference's / 255);
- ``elastic``: the l_inf bound of the flow field, in pixels.

Budgets: for ``imagenet`` and ``cifar`` the fourth of the six sizes the reference calibrated for
each attack (``advex_uar/analysis/calibrations/<dataset>/calibs.out``); the reference calibrated
fog, snow and Gabor on ImageNet-100 only, so ``cifar`` takes ImageNet-100's (each is a strength
of a blend, defined independently of the resolution). ``mnist`` has no calibration in the
reference: ``scripts/calibrate_unseen.py`` derives one (docs/evaluation.md, "Unseen adversaries").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

UNSEEN_ATTACKS: tuple[str, ...] = ("jpeg-linf", "jpeg-l1", "fog", "snow", "gabor", "elastic")
"""In the order the suite runs and the tables show them."""

UNSEEN_UNION = "unseen_union"
"""Correct on the clean point and under every unseen adversary."""

FAMILIES: tuple[str, ...] = ("mnist", "cifar", "imagenet")


@dataclass(frozen=True)
class UnseenBudget:
    eps: float
    source: str


_REF_IMAGENET = "Kang et al. 2019, ImageNet-100 calibration (4th of 6 sizes)"
_REF_CIFAR = "Kang et al. 2019, CIFAR-10 calibration (4th of 6 sizes)"
_TRANSFER = "ImageNet-100's size (the reference did not calibrate it on CIFAR-10)"
_DERIVED = ("derived: scripts/calibrate_unseen.py, the ladder size at which an l_inf-AT small CNN "
            "on mnist-5k keeps about half its clean accuracy")

BUDGETS: dict[str, dict[str, UnseenBudget]] = {
    "imagenet": {
        "jpeg-linf": UnseenBudget(0.5, _REF_IMAGENET),
        "jpeg-l1": UnseenBudget(16384.0, _REF_IMAGENET),
        "fog": UnseenBudget(2048 / 255, _REF_IMAGENET),
        "snow": UnseenBudget(2.0, _REF_IMAGENET),
        "gabor": UnseenBudget(400 / 255, _REF_IMAGENET),
        "elastic": UnseenBudget(4.0, _REF_IMAGENET),
    },
    "cifar": {
        "jpeg-linf": UnseenBudget(0.25, _REF_CIFAR),
        "jpeg-l1": UnseenBudget(256.0, _REF_CIFAR),
        "fog": UnseenBudget(2048 / 255, _TRANSFER),
        "snow": UnseenBudget(2.0, _TRANSFER),
        "gabor": UnseenBudget(400 / 255, _TRANSFER),
        "elastic": UnseenBudget(1.0, _REF_CIFAR),
    },
    "mnist": {
        "jpeg-linf": UnseenBudget(1.0, _DERIVED),
        "jpeg-l1": UnseenBudget(256.0, _DERIVED),
        "fog": UnseenBudget(0.5, _DERIVED),
        "snow": UnseenBudget(0.25, _DERIVED),
        "gabor": UnseenBudget(0.4, _DERIVED),
        "elastic": UnseenBudget(0.5, _DERIVED),
    },
}

UNSEEN_STEPS = 200
"""Iterations of every unseen attack: the reference's calibration runs (``calibs.out``: 200)."""


def family_of(height: int, width: int) -> str:
    """The dataset family whose budgets apply to images of this size: sides up to 28 are
    MNIST-like, up to 64 CIFAR-like, larger ImageNet-like."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    side = max(height, width)
    if side <= 28:
        return "mnist"
    if side <= 64:
        return "cifar"
    return "imagenet"


def budgets_for(height: int, width: int) -> dict[str, float]:
    """attack -> eps for images of this size."""
    return {name: b.eps for name, b in BUDGETS[family_of(height, width)].items()}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _pair(value: object) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2 and all(_number(v) is not None for v in value):
        return float(value[0]), float(value[1])  # type: ignore[arg-type]
    return None


@dataclass(frozen=True)
class UnseenRow:
    """One line of the unseen suite's results: what it is, its accuracy, its 95 % interval (None
    for averages, which are not a proportion of points) and the budget (attacks only)."""

    key: str
    label: str
    accuracy: float | None
    interval: tuple[float, float] | None = None
    eps: float | None = None


def unseen_rows(metrics: object) -> list[UnseenRow]:
    """The unseen suite's numbers of a ``metrics.json`` (empty when it has none): each unseen
    adversary, their mean, the unseen union, then the corruptions' mean."""
    if not isinstance(metrics, Mapping) or not isinstance(metrics.get("unseen"), Mapping):
        return []
    block = metrics["unseen"]
    accuracy = block.get("accuracy") if isinstance(block.get("accuracy"), Mapping) else {}
    intervals = block.get("intervals") if isinstance(block.get("intervals"), Mapping) else {}
    eps = block.get("eps") if isinstance(block.get("eps"), Mapping) else {}
    names = [n for n in UNSEEN_ATTACKS if n in accuracy] + sorted(set(accuracy) - set(UNSEEN_ATTACKS))
    rows = [UnseenRow(n, n, _number(accuracy[n]), _pair(intervals.get(n)), _number(eps.get(n)))
            for n in names]
    rows.append(UnseenRow("unseen_mean", "unseen mean", _number(block.get("mean"))))
    rows.append(UnseenRow(UNSEEN_UNION, "unseen union", _number(block.get("union")),
                          _pair(intervals.get("union"))))
    corruptions = metrics.get("corruptions")
    if isinstance(corruptions, Mapping):
        rows.append(UnseenRow("corruptions_mean", "corruptions mean", _number(corruptions.get("mean"))))
    return rows
