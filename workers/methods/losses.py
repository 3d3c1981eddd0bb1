"""Pure loss functions of the training methods: KL terms and RAMP's logit-pairing losses.

Every pairing loss takes the two logit tensors ``z_q`` (the key norm's adversarial logits) and
``z_r`` (the paired norm's) plus a boolean per-sample ``mask`` (RAMP's gamma: the samples whose
``z_q`` prediction is still correct), and returns the mean of a per-sample distance over the
masked samples -- ``0`` (not NaN) when the mask is empty. Gradients flow through both logit
tensors: the reference pairs the two distributions symmetrically in the autograd sense (neither
side is detached).

Variants (``ramp.pairing``): ``kl`` (default, the paper's and reference's KL(p_q || p_r)),
``mse`` (squared Euclidean distance between the probability vectors) and ``cos`` (one minus the
cosine similarity of the probability vectors). All three compare the softmax distributions, so
their scales are comparable (each is 0 for identical predictions and bounded for ``mse``/``cos``)
and lambda keeps the same meaning across variants.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.contract.registry import Registry

PairingLoss = Callable[[Tensor, Tensor, Tensor], Tensor]
PAIRING_LOSSES: Registry[PairingLoss] = Registry("pairing loss")


def kl_per_sample(z_p: Tensor, z_q: Tensor) -> Tensor:
    """KL(softmax(z_p) || softmax(z_q)) for each row, from logits (stable via log-softmax)."""
    log_p = F.log_softmax(z_p, dim=1)
    log_q = F.log_softmax(z_q, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def kl_batchmean(z_p: Tensor, z_q: Tensor) -> Tensor:
    """Mean over the batch of KL(softmax(z_p) || softmax(z_q)) (TRADES' robust term)."""
    return kl_per_sample(z_p, z_q).mean()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 for an empty mask, with no host synchronisation."""
    mask = mask.to(dtype=torch.bool)
    # where (not multiply) so a non-finite value outside the mask cannot leak a NaN in.
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


@PAIRING_LOSSES.register("kl")
def kl_pairing(z_q: Tensor, z_r: Tensor, mask: Tensor) -> Tensor:
    """Mean over ``mask`` of KL(p_q || p_r)."""
    return masked_mean(kl_per_sample(z_q, z_r), mask)


@PAIRING_LOSSES.register("mse")
def mse_pairing(z_q: Tensor, z_r: Tensor, mask: Tensor) -> Tensor:
    """Mean over ``mask`` of ||p_q - p_r||_2^2."""
    diff = F.softmax(z_q, dim=1) - F.softmax(z_r, dim=1)
    return masked_mean(diff.pow(2).sum(dim=1), mask)


@PAIRING_LOSSES.register("cos")
def cos_pairing(z_q: Tensor, z_r: Tensor, mask: Tensor) -> Tensor:
    """Mean over ``mask`` of 1 - cos(p_q, p_r)."""
    sim = F.cosine_similarity(F.softmax(z_q, dim=1), F.softmax(z_r, dim=1), dim=1)
    return masked_mean(1.0 - sim, mask)


def pairing_loss(name: str) -> PairingLoss:
    return PAIRING_LOSSES.get(name)


# --- the lecture's defences (docs/methods.md writes each loss out) ------------------------------


def alp_loss(z_clean: Tensor, z_adv: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """ALP (Kannan et al. 2018): CE(z_adv, y) + lam * mean_i ||z_adv_i - z_clean_i||_2^2.

    Returns (total, ce, pairing). The reference's ``mean_squared_error`` also divides by the number
    of classes: its lambda is ``lam * num_classes`` here.
    """
    ce = F.cross_entropy(z_adv, y)
    pairing = (z_adv - z_clean).pow(2).sum(dim=1).mean()
    return ce + lam * pairing, ce, pairing


MART_EPS = 1e-12  # keeps log(1 - p) finite when a wrong class takes all the mass


def mart_loss(z_clean: Tensor, z_adv: Tensor, y: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """MART (Wang et al. 2020): BCE(p(x'), y) + beta * mean_i KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i)).

    BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k) (the "boosted" CE: it also pushes down the most
    likely wrong class). Returns (total, bce, weighted KL).
    """
    p_adv = F.softmax(z_adv, dim=1)
    wrong = p_adv.masked_fill(F.one_hot(y, p_adv.shape[1]).bool(), float("-inf")).amax(dim=1)
    bce = F.cross_entropy(z_adv, y) - torch.log((1.0 - wrong).clamp_min(MART_EPS)).mean()
    p_true = F.softmax(z_clean, dim=1).gather(1, y[:, None]).squeeze(1)
    robust = (kl_per_sample(z_clean, z_adv) * (1.0 - p_true)).mean()
    return bce + beta * robust, bce, robust


def fgsm_at_loss(z_clean: Tensor, z_adv: Tensor, y: Tensor, alpha: float) -> Tensor:
    """FGSM-AT (Goodfellow et al. 2015): alpha * CE(z_clean, y) + (1 - alpha) * CE(z_adv, y)."""
    return alpha * F.cross_entropy(z_clean, y) + (1.0 - alpha) * F.cross_entropy(z_adv, y)


def vat_loss(z_clean: Tensor, z_adv: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """VAT (Miyato et al. 2018): CE(z_clean, y) + lam * mean_i KL(p(x_i) || p(x_i + r_adv_i)).

    The clean distribution in the regulariser is a constant (detached), as in the paper; no label
    enters it. Returns (total, ce, lds).
    """
    ce = F.cross_entropy(z_clean, y)
    lds = kl_batchmean(z_clean.detach(), z_adv)
    return ce + lam * lds, ce, lds


def soft_ce(z: Tensor, soft: Tensor, temperature: float) -> Tensor:
    """Mean over rows of -sum_k soft_k * log softmax(z / T)_k (distillation on soft labels)."""
    return -(soft * F.log_softmax(z / temperature, dim=1)).sum(dim=1).mean()
