"""MART (Wang et al. 2020): BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x)).

x' from the training attack (APGD on the cross-entropy, eval mode; the reference uses PGD on the
cross-entropy) on the ``mart.norm`` mode; the loss (``losses.mart_loss``) on two train-mode
forwards with gradients through both. ``parts``: ``ce`` (the boosted CE), ``mart`` (the weighted KL).
"""

from __future__ import annotations

from torch import Tensor, nn

from workers.methods.base import StepOutput
from workers.methods.common import param
from workers.methods.losses import mart_loss
from workers.methods.norm_choice import NormChoiceMethod, robust_counts
from workers.methods.registry import METHODS


@METHODS.register("mart")
class MART(NormChoiceMethod):
    name = "mart"
    norm_key = "mart.norm"

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        adv = self.adversarial(model, x, y)
        z_clean, z_adv = model(x), model(adv.x_adv)
        loss, bce, robust = mart_loss(z_clean, z_adv, y, float(param(self.ctx, "mart.beta")))
        counts, attacked = robust_counts(adv, z_adv, y)
        return StepOutput(loss=loss, parts={"ce": bce.detach(), "mart": robust.detach()},
                          robust_correct=counts, attacked=attacked)
