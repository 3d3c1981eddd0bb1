"""MAX: APGD for every norm; per sample keep the example with the highest attack loss; one CE step.

Ties go to the first norm in (l_inf, l_2, l_1) order. The attack losses are the attacks' own
per-sample best losses (eval mode), exactly what the selection rule compares.

Training robust accuracy per norm: the CE step only sees the selected example, so the per-norm
counts come from one extra no-grad eval-mode forward of the three adversarial batches (about
one forward-backward pass on top of the 30 attack passes; eval mode leaves BN statistics alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import eval_mode
from workers.contract.norms import NORMS
from workers.methods.base import StepOutput
from workers.methods.common import AdversarialMethod, batched_forward, correct_count, unwrap
from workers.methods.registry import METHODS


def select_max(candidates: Tensor, losses: Tensor) -> Tensor:
    """Per sample, the candidate with the highest loss (first one on ties).

    ``candidates`` is (K, N, ...) and ``losses`` (K, N); returns (N, ...).
    """
    if candidates.shape[:2] != losses.shape:
        raise ValueError(f"candidates {tuple(candidates.shape)} do not match losses {tuple(losses.shape)}")
    best = losses.argmax(dim=0)
    return candidates[best, torch.arange(candidates.shape[1], device=candidates.device)]


@METHODS.register("max")
class MAX(AdversarialMethod):
    name = "max"

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        results = [self.run_attack(model, x, y, norm) for norm in NORMS]
        candidates = torch.stack([r.x_adv for r in results])
        x_max = select_max(candidates, torch.stack([r.loss for r in results]))
        logits = model(x_max)
        loss = F.cross_entropy(logits, y)
        out = StepOutput(loss=loss, parts={"ce": loss.detach()})
        n = int(y.shape[0])
        with eval_mode(unwrap(model)) as bare:
            per_norm = batched_forward(bare, candidates)
        for i, norm in enumerate(NORMS):
            out.robust_correct[norm] = correct_count(per_norm[i], y)
            out.attacked[norm] = n
        return out
