"""E-AT (Croce & Hein, 2022): one norm per batch, sampled towards the least robust norm.

The norms come from ``eat.norms`` (default ``linf,l1``: the extremes, whose AT models cover l_2
too). Sampling weight of a norm = 1 - (its cumulative training robust accuracy so far), normalised;
uniform until every norm has been sampled at least once (0.5/0.5 for two norms), and uniform if
every weight is 0. The robust accuracy is, as in the reference (robust-finetuning's
``apgd_train``), the training attack's own eval-mode statistic: a sample counts as robust only if
no iterate of the attack (the start included) was misclassified (``AttackResult.robust``). It is
accumulated over the whole run (not reset per epoch) -- the statistics and the generator state are
in ``state_dict`` for resume. (The per-epoch ``train_robust_acc`` report stays the train-mode
prediction on the returned point, like every other method's.)

Cost: one attack per batch, like single-norm AT. Reading the statistics to choose the next norm
is one small host synchronisation per step, inherent to the method: the next batch's attack
depends on the accuracies so far.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from workers.contract.norms import Norm
from workers.methods.base import MethodContext, StepOutput
from workers.methods.common import (
    AdversarialMethod,
    AttackFn,
    NormSampler,
    adversarial_ce,
    method_seed,
    param,
    parse_norms,
)
from workers.methods.registry import METHODS


@METHODS.register("eat")
class EAT(AdversarialMethod):
    name = "eat"

    def __init__(self, ctx: MethodContext, *, attack: AttackFn | None = None) -> None:
        super().__init__(ctx, attack=attack)
        self.norms: tuple[Norm, ...] = parse_norms(str(param(ctx, "eat.norms")))
        self.sampler = NormSampler(method_seed(self.ctx.seed, "eat"))
        self.correct = torch.zeros(len(self.norms), dtype=torch.float64)  # moved to the batch's device
        self.attacked = [0] * len(self.norms)

    def probabilities(self) -> list[float]:
        """The current sampling distribution over ``self.norms``."""
        k = len(self.norms)
        if min(self.attacked) == 0:
            return [1.0 / k] * k
        acc = self.correct.cpu() / torch.tensor(self.attacked, dtype=torch.float64)
        weights = (1.0 - acc).clamp_min(0.0)
        total = float(weights.sum())
        if total <= 0.0:
            return [1.0 / k] * k
        return (weights / total).tolist()

    def record(self, index: int, correct: Tensor, attacked: int) -> None:
        """Add one batch's robust count for norm ``self.norms[index]`` to the statistics."""
        if self.correct.device != correct.device:
            self.correct = self.correct.to(correct.device)
        self.correct[index] += correct.to(self.correct.dtype)
        self.attacked[index] += attacked

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        index = self.sampler.draw(self.probabilities())
        norm = self.norms[index]
        result = self.run_attack(model, x, y, norm)
        if result.robust is None:
            raise ValueError("E-AT's norm sampling needs the training attack's 'misclassified at any "
                             "iterate' flags (AttackResult.robust); this attack does not report them")
        out = adversarial_ce(model, result.x_adv, y, norm)
        self.record(index, result.robust.sum(), int(y.shape[0]))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "norms": list(self.norms),
            "correct": self.correct.detach().cpu().clone(),
            "attacked": list(self.attacked),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["norms"]) != self.norms:
            raise ValueError(f"E-AT state saved for norms {state['norms']}, this run uses {list(self.norms)}")
        self.correct = state["correct"].to(dtype=torch.float64).clone()
        self.attacked = [int(a) for a in state["attacked"]]
        self.sampler.load_state_dict(state["sampler"])
