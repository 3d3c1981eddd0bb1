"""Which norm(s) a single-norm defence attacks in a batch, so ALP, MART, FGSM-AT and fast AT run
on the project's three threat models the way MAX and SAT do.

Modes (the ``<method>.norm`` params): ``linf`` / ``l2`` / ``l1`` (the paper's form, one fixed
norm), ``max`` (per sample the adversarial example of the norm whose attack loss is highest, as
MAX) and ``sat`` (one norm drawn uniformly per batch, as SAT). The draw comes from the method's
own CPU generator, saved in its state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from workers.attacks.common import eval_mode
from workers.contract.catalog import NORM_MODES
from workers.contract.norms import NORMS, Norm
from workers.methods.base import MethodContext
from workers.methods.common import (
    AdversarialMethod,
    AttackFn,
    NormSampler,
    batched_forward,
    correct_count,
    method_seed,
    param,
    unwrap,
)
from workers.methods.max import select_max

# (model, x, y, norm) -> AttackResult
NormAttack = Callable[[nn.Module, Tensor, Tensor, Norm], object]


def check_mode(mode: str, key: str) -> str:
    if mode not in NORM_MODES:
        raise ValueError(f"{key} must be one of {', '.join(NORM_MODES)}, got {mode!r}")
    return mode


def batch_norms(mode: str, sampler: NormSampler) -> tuple[Norm, ...]:
    """The norms attacked in this batch (``sat`` consumes one draw of ``sampler``)."""
    if mode == "max":
        return NORMS
    if mode == "sat":
        return (NORMS[sampler.draw([1.0] * len(NORMS))],)
    return (mode,)  # type: ignore[return-value]


@dataclass
class Adversarial:
    """The batch a defence trains on, and (for ``max``) the per-norm robust counts of its
    candidates. With one norm the method counts on its own training forward."""

    x_adv: Tensor
    norms: tuple[Norm, ...]
    robust_correct: dict[Norm, Tensor] = field(default_factory=dict)


def adversarial_batch(model: nn.Module, x: Tensor, y: Tensor, norms: tuple[Norm, ...],
                      attack: NormAttack) -> Adversarial:
    """``attack`` on each norm; with several, per sample the highest-loss candidate (MAX's rule)."""
    results = [attack(model, x, y, norm) for norm in norms]
    if len(results) == 1:
        return Adversarial(results[0].x_adv, norms)  # type: ignore[attr-defined]
    candidates = torch.stack([r.x_adv for r in results])  # type: ignore[attr-defined]
    chosen = select_max(candidates, torch.stack([r.loss for r in results]))  # type: ignore[attr-defined]
    with eval_mode(unwrap(model)) as bare:
        per_norm = batched_forward(bare, candidates)
    return Adversarial(chosen, norms, {norm: correct_count(per_norm[i], y) for i, norm in enumerate(norms)})


def robust_counts(adv: Adversarial, z_adv: Tensor, y: Tensor) -> tuple[dict[Norm, Tensor], dict[Norm, int]]:
    """(robust_correct, attacked) of a StepOutput: the candidates' counts, else the training forward's."""
    counts = adv.robust_correct or {adv.norms[0]: correct_count(z_adv, y)}
    return counts, {norm: int(y.shape[0]) for norm in counts}


class NormChoiceMethod(AdversarialMethod):
    """An adversarial method whose norm(s) follow its ``norm_key`` param; ``attack_one`` is the
    training attack on one norm (default: the injectable APGD of ``AdversarialMethod``)."""

    norm_key: ClassVar[str]

    def __init__(self, ctx: MethodContext, *, attack: AttackFn | None = None) -> None:
        super().__init__(ctx, attack=attack)
        self.mode = check_mode(str(param(ctx, self.norm_key)), self.norm_key)
        self.sampler = NormSampler(method_seed(ctx.seed, self.name))

    def attack_one(self, model: nn.Module, x: Tensor, y: Tensor, norm: Norm) -> Any:
        return self.run_attack(model, x, y, norm)

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Adversarial:
        return adversarial_batch(model, x, y, batch_norms(self.mode, self.sampler), self.attack_one)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
