"""ALP, adversarial logit pairing (Kannan et al. 2018): CE(z(x'), y) + lambda * ||z(x') - z(x)||^2.

x' from the training attack (APGD, eval mode) on the ``alp.norm`` mode (one norm, ``max`` or
``sat``); then two train-mode forwards, clean and adversarial, with gradients through both logit
vectors (neither side is detached, as in the reference). ``parts``: ``ce``, ``alp``.
"""

from __future__ import annotations

from torch import Tensor, nn

from workers.methods.base import StepOutput
from workers.methods.common import param
from workers.methods.losses import alp_loss
from workers.methods.norm_choice import NormChoiceMethod, robust_counts
from workers.methods.registry import METHODS


@METHODS.register("alp")
class ALP(NormChoiceMethod):
    name = "alp"
    norm_key = "alp.norm"

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        adv = self.adversarial(model, x, y)
        z_clean, z_adv = model(x), model(adv.x_adv)
        loss, ce, pairing = alp_loss(z_clean, z_adv, y, float(param(self.ctx, "alp.lambda")))
        counts, attacked = robust_counts(adv, z_adv, y)
        return StepOutput(loss=loss, parts={"ce": ce.detach(), "alp": pairing.detach()},
                          robust_correct=counts, attacked=attacked)
