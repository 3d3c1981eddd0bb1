"""The one-step defences: FGSM-AT (Goodfellow et al. 2015) and fast AT (Wong et al. 2020).

- ``fgsm-at``: alpha * CE(x) + (1 - alpha) * CE(x + eps * sign(grad_x CE(x))) (``fgsm.alpha``,
  the paper's 0.5); the step has the full radius, from x itself.
- ``fast-at``: CE on one FGSM step of ``fast.step`` * eps (1.25) from a uniform random start,
  projected back onto the ball ∩ box. Wong et al.'s cyclic LR is the ``cyclic`` schedule; their
  early stopping on a PGD check is left to the per-epoch monitor.

Both attack in eval mode (``single_step.one_step_attack``) on the ``<method>.norm`` mode: one
norm, or per sample the worst of the three one-step examples (``max``), or one norm per batch
(``sat``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from workers.contract.norms import Norm
from workers.methods.base import StepOutput
from workers.methods.common import param, unwrap
from workers.methods.losses import fgsm_at_loss
from workers.methods.norm_choice import NormChoiceMethod, robust_counts
from workers.methods.registry import METHODS
from workers.methods.single_step import one_step_attack, random_point


@METHODS.register("fgsm-at")
class FGSMAT(NormChoiceMethod):
    name = "fgsm-at"
    norm_key = "fgsm.norm"

    def attack_one(self, model: nn.Module, x: Tensor, y: Tensor, norm: Norm) -> Any:
        eps = self.eps(norm)
        return one_step_attack(unwrap(model), x, y, norm, eps, eps, sparsity=self.l1_sparsity)

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        adv = self.adversarial(model, x, y)
        z_clean, z_adv = model(x), model(adv.x_adv)
        loss = fgsm_at_loss(z_clean, z_adv, y, float(param(self.ctx, "fgsm.alpha")))
        counts, attacked = robust_counts(adv, z_adv, y)
        return StepOutput(loss=loss, parts={"ce": F.cross_entropy(z_clean, y).detach()},
                          robust_correct=counts, attacked=attacked)


@METHODS.register("fast-at")
class FastAT(NormChoiceMethod):
    name = "fast-at"
    norm_key = "fast.norm"

    def attack_one(self, model: nn.Module, x: Tensor, y: Tensor, norm: Norm) -> Any:
        eps = self.eps(norm)
        start = random_point(norm, x, eps, self.sampler.generator)
        length = float(param(self.ctx, "fast.step")) * eps
        return one_step_attack(unwrap(model), x, y, norm, eps, length, sparsity=self.l1_sparsity, start=start)

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        adv = self.adversarial(model, x, y)
        z_adv = model(adv.x_adv)
        loss = F.cross_entropy(z_adv, y)
        counts, attacked = robust_counts(adv, z_adv, y)
        return StepOutput(loss=loss, parts={"ce": loss.detach()}, robust_correct=counts, attacked=attacked)
