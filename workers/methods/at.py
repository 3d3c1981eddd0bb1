"""Single-norm adversarial training (``at-linf``, ``at-l2``, ``at-l1``).

Each batch: the training form of APGD on the one norm (``attack.steps_<norm>`` iterations; l_1
starts at top-k fraction ``attack.l1_sparsity``), then one cross-entropy step on the adversarial
examples (train mode; the attack itself runs in eval mode).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from workers.contract.norms import Norm
from workers.methods.base import StepOutput
from workers.methods.common import AdversarialMethod, adversarial_ce
from workers.methods.registry import METHODS


class SingleNormAT(AdversarialMethod):
    norm: ClassVar[Norm]

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        x_adv = self.run_attack(model, x, y, self.norm).x_adv
        return adversarial_ce(model, x_adv, y, self.norm)


@METHODS.register("at-linf")
class LinfAT(SingleNormAT):
    name = "at-linf"
    norm = "linf"


@METHODS.register("at-l2")
class L2AT(SingleNormAT):
    name = "at-l2"
    norm = "l2"


@METHODS.register("at-l1")
class L1AT(SingleNormAT):
    name = "at-l1"
    norm = "l1"
