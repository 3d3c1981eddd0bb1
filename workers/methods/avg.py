"""AVG: the mean of the cross-entropy losses on the three norms' adversarial examples.

All three attacks run first (same model state), then each norm's examples get their own
train-mode forward: batch-norm layers
normalise each norm's batch with its own statistics and update their running statistics three
times per step. ``parts`` holds the mean (``ce``) and each norm's CE (``ce_<norm>``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.contract.norms import NORMS
from workers.methods.base import StepOutput
from workers.methods.common import AdversarialMethod, correct_count
from workers.methods.registry import METHODS


@METHODS.register("avg")
class AVG(AdversarialMethod):
    name = "avg"

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        out = StepOutput(loss=torch.zeros((), device=x.device))
        losses = []
        # Every attack first, then the forwards: a train-mode forward updates the BN running
        # statistics the (eval-mode) attacks use, so all three attacks see the same model state.
        x_adv = {norm: self.run_attack(model, x, y, norm).x_adv for norm in NORMS}
        for norm in NORMS:
            logits = model(x_adv[norm])
            ce = F.cross_entropy(logits, y)
            losses.append(ce)
            out.parts[f"ce_{norm}"] = ce.detach()
            out.robust_correct[norm] = correct_count(logits, y)
            out.attacked[norm] = int(y.shape[0])
        out.loss = torch.stack(losses).mean()
        out.parts["ce"] = out.loss.detach()
        return out
