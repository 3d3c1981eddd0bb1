"""SAT: per batch, one norm drawn uniformly from (l_inf, l_2, l_1); AT on it.

The draw comes from the method's own CPU ``torch.Generator`` seeded from the run's seed, and its
state is part of ``state_dict`` so a resumed run draws the same norms as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from workers.contract.norms import NORMS, Norm
from workers.methods.base import MethodContext, StepOutput
from workers.methods.common import AdversarialMethod, AttackFn, NormSampler, adversarial_ce, method_seed
from workers.methods.registry import METHODS


@METHODS.register("sat")
class SAT(AdversarialMethod):
    name = "sat"
    norms: tuple[Norm, ...] = NORMS

    def __init__(self, ctx: MethodContext, *, attack: AttackFn | None = None) -> None:
        super().__init__(ctx, attack=attack)
        self.sampler = NormSampler(method_seed(self.ctx.seed, "sat"))

    def draw_norm(self) -> Norm:
        return self.norms[self.sampler.draw([1.0] * len(self.norms))]

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        norm = self.draw_norm()
        return adversarial_ce(model, self.run_attack(model, x, y, norm).x_adv, y, norm)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
