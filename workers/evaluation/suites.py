"""Evaluation suites: which attacks run against each norm.

A suite is either a registered name (``SUITES``: "fast", "autoattack") or a list of attack names
(``ATTACKS``, the names of ``workers.catalog.EVAL_ATTACKS``). Both resolve to a list of ``Stage``s
per norm; ``evaluate`` runs the stages in order on the points that are still classified correctly,
so a sample is robust under a norm only if it survives every stage.

- ``fast``: our APGD on the cross-entropy, 100 iterations (``steps`` overrides), l_1 top-k
  sparsity 0.2 (the spec's evaluation value; training uses 0.05).
- ``autoattack``: pyautoattack's "standard" version for the norm (see ``autoattack_suite``).
- custom: "apgd" / "pgd" (ours, 100 iterations or ``steps``), "apgd-ce", "apgd-t", "fab-t",
  "square" (pyautoattack components with the standard version's per-norm settings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch
from torch import Tensor, nn

from workers.attacks.apgd import apgd
from workers.attacks.pgd import pgd
from workers.evaluation.autoattack_suite import run_autoattack
from workers.norms import Norm
from workers.registry import Registry

EVAL_STEPS = 100
EVAL_L1_SPARSITY = 0.2

AttackFn: TypeAlias = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""(model in eval mode, x, y) -> x_adv inside the norm ball and the [0, 1] box."""


@dataclass(frozen=True)
class AttackSettings:
    """What every stage of one norm is built from."""

    norm: Norm
    eps: float
    seed: int = 0
    steps: int | None = None  # None: the suite's own iteration counts
    batch_size: int = 256

    @property
    def iterations(self) -> int:
        return EVAL_STEPS if self.steps is None else self.steps


@dataclass(frozen=True)
class Stage:
    name: str
    run: AttackFn


StageBuilder: TypeAlias = Callable[[AttackSettings], AttackFn]
SuiteBuilder: TypeAlias = Callable[[AttackSettings], list[Stage]]

ATTACKS: Registry[StageBuilder] = Registry("evaluation attack")
SUITES: Registry[SuiteBuilder] = Registry("evaluation suite")


@ATTACKS.register("apgd")
def _apgd(s: AttackSettings) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return apgd(model, x, y, s.norm, s.eps, s.iterations, loss="ce", l1_sparsity=EVAL_L1_SPARSITY).x_adv

    return run


@ATTACKS.register("pgd")
def _pgd(s: AttackSettings) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return pgd(model, x, y, s.norm, s.eps, s.iterations).x_adv

    return run


def _autoattack_component(name: str | None) -> StageBuilder:
    def build(s: AttackSettings) -> AttackFn:
        def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return run_autoattack(
                model, x, y, s.norm, s.eps, seed=s.seed, attacks=None if name is None else [name],
                steps=s.steps, batch_size=s.batch_size,
            )

        return run

    return build


for _name in ("apgd-ce", "apgd-t", "fab-t", "square"):
    ATTACKS.add(_name, _autoattack_component(_name))


@SUITES.register("fast")
def _fast(s: AttackSettings) -> list[Stage]:
    return [Stage("apgd", ATTACKS.get("apgd")(s))]


@SUITES.register("autoattack")
def _autoattack(s: AttackSettings) -> list[Stage]:
    return [Stage("autoattack", _autoattack_component(None)(s))]


def resolve_suite(suite: str | Sequence[str]) -> SuiteBuilder:
    """The stage builder of a suite name or an attack list; ``ValueError`` names what is unknown."""
    if isinstance(suite, str):
        if suite not in SUITES:
            raise ValueError(
                f"unknown evaluation suite {suite!r}; use one of {', '.join(SUITES.names())} "
                f"or a list of attacks from {', '.join(ATTACKS.names())}"
            )
        return SUITES.get(suite)
    names = list(suite)
    if not names:
        raise ValueError("a custom evaluation suite needs at least one attack")
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        raise ValueError(
            f"unknown evaluation attack(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(ATTACKS.names())}"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"attack(s) listed twice in the suite: {', '.join(duplicated)}")

    def build(s: AttackSettings) -> list[Stage]:
        return [Stage(name, ATTACKS.get(name)(s)) for name in names]

    return build


NORM_SIZE: dict[str, Callable[[Tensor], Tensor]] = {
    "linf": lambda d: d.abs().amax(dim=1),
    "l2": lambda d: d.norm(dim=1),
    "l1": lambda d: d.abs().sum(dim=1),
}
"""norm -> per-sample size of flattened perturbations (N, d)."""


def threat_model_violation(x: Tensor, x_adv: Tensor, norm: Norm, eps: float) -> str | None:
    """Why ``x_adv`` is not a valid perturbation of ``x`` (None when it is).

    A small relative slack absorbs float rounding in the attacks' projections.
    """
    if x_adv.shape != x.shape:
        return f"shape {tuple(x_adv.shape)} != input shape {tuple(x.shape)}"
    if not torch.isfinite(x_adv).all():
        return "non-finite values"
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        return f"values outside [0, 1] ({lo:g}..{hi:g})"
    delta = (x_adv - x).flatten(1).double()
    size = float(NORM_SIZE[norm](delta).max())
    if size > eps * (1 + 1e-4) + 1e-6:
        return f"{norm} perturbation {size:.6g} > eps {eps:g}"
    return None
