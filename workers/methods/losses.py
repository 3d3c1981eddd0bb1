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
