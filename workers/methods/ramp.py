"""RAMP (NeurIPS 2024): MAX over a key trade-off pair plus logit pairing from q to r.

One step (``docs/methods.md#one-ramp-step``):

1. Eval-mode APGD on q and on r (``ramp.q`` / ``ramp.r``, default l_inf / l_1): ``x_q, l_q``
   and ``x_r, l_r`` (per-sample best losses).
2. ``x_max`` = ``x_r`` where ``l_r >= l_q`` (ties go to r), else ``x_q``.
3. Train-mode forwards ``z_r = f(x_r)``, ``z_q = f(x_q)``, ``z_max = f(x_max)``, in that order.
4. gamma = samples with ``argmax z_q == y`` (a detached mask).
5. pairing = mean over gamma of KL(p_q || p_r) (``ramp.pairing``: ``kl`` | ``mse`` | ``cos``,
   see ``losses.py``), gradients through both sides, 0 when gamma is empty.
6. ``L = CE(z_max, y) + lambda * pairing``.

With ``ramp.trades_beta = beta > 0``, the TRADES form of the reference's WRN-28-10 recipe (beta 6
there): ``L = CE(z_clean, y) + beta * KL(p_clean || p_max) + lambda * pairing`` -- the clean
cross-entropy *replaces* CE(z_max); ``z_clean = f(x)`` is a fourth train-mode forward, after
z_r and z_q and before z_max, as in the reference. (The reference calls f(x) twice, for the CE
and for the KL; in train mode both give the same logits, so we forward once. Its second call
only adds one more running-statistics update with the same batch statistics.)

Batch norm: like the reference, the batches get separate train-mode forwards in the reference's
order: r (the l_1 batch by default) first, then q, then max. Each batch is normalised with its own
statistics (as a plain AT forward would be) and the running statistics are updated once per
forward, so the order decides them: they end up weighted towards the later batches (mostly
x_max). A single concatenated forward would instead mix the batches' statistics into one
normalisation -- a different model -- so we keep the reference's.

lambda: ``ramp.lambda`` (catalog default: the reference scripts' 5 from scratch, 1.5 fine-tuning;
the paper text's 2 / 0.5 are a ``--set ramp.lambda=...`` away). Fine-tuning changes nothing in the
step itself: the loop's schedule and the catalog's defaults (lambda, GP off) make the difference.

``parts``: ``ce`` (of z_max; of z_clean in the TRADES form), ``pairing`` (unweighted) and
``trades`` when on; robust counts of q and r from the train-mode forwards of ``x_q`` and ``x_r``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.contract.norms import NORMS, Norm
from workers.methods.base import MethodContext, StepOutput
from workers.methods.common import AdversarialMethod, AttackFn, correct_count, param
from workers.methods.losses import kl_batchmean, pairing_loss
from workers.methods.registry import METHODS


def select_pair_max(x_q: Tensor, l_q: Tensor, x_r: Tensor, l_r: Tensor) -> Tensor:
    """Per sample ``x_r`` where ``l_r >= l_q`` else ``x_q`` (ties go to r, as in the reference)."""
    take_r = (l_r >= l_q).view(-1, *([1] * (x_q.ndim - 1)))
    return torch.where(take_r, x_r, x_q)


@METHODS.register("ramp")
class RAMP(AdversarialMethod):
    name = "ramp"

    def __init__(self, ctx: MethodContext, *, attack: AttackFn | None = None) -> None:
        super().__init__(ctx, attack=attack)
        self.q: Norm = param(ctx, "ramp.q")
        self.r: Norm = param(ctx, "ramp.r")
        if self.q == self.r or self.q not in NORMS or self.r not in NORMS:
            raise ValueError(f"ramp.q and ramp.r must be different norms of {NORMS}: {self.q!r}, {self.r!r}")
        self.lam = float(param(ctx, "ramp.lambda"))
        self.pairing_name = str(param(ctx, "ramp.pairing"))
        self.pairing = pairing_loss(self.pairing_name)
        self.trades_beta = float(param(ctx, "ramp.trades_beta"))

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        res_q = self.run_attack(model, x, y, self.q)
        res_r = self.run_attack(model, x, y, self.r)
        x_max = select_pair_max(res_q.x_adv, res_q.loss, res_r.x_adv, res_r.loss)
        z_r = model(res_r.x_adv)  # the reference's order: r, q, (clean,) max
        z_q = model(res_q.x_adv)
        z_clean = model(x) if self.trades_beta > 0 else None
        z_max = model(x_max)
        gamma = (z_q.detach().argmax(dim=1) == y)
        pairing = self.pairing(z_q, z_r, gamma)
        if z_clean is None:
            ce = F.cross_entropy(z_max, y)
            loss = ce + self.lam * pairing
            parts = {"ce": ce.detach(), "pairing": pairing.detach()}
        else:
            ce = F.cross_entropy(z_clean, y)
            trades = kl_batchmean(z_clean, z_max)
            loss = ce + self.trades_beta * trades + self.lam * pairing
            parts = {"ce": ce.detach(), "pairing": pairing.detach(), "trades": trades.detach()}
        n = int(y.shape[0])
        return StepOutput(
            loss=loss,
            parts=parts,
            robust_correct={self.q: correct_count(z_q, y), self.r: correct_count(z_r, y)},
            attacked={self.q: n, self.r: n},
        )
