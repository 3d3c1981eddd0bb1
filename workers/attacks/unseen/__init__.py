"""Unseen adversaries (Kang et al. 2019, "Testing Robustness Against Unforeseen Adversaries"):
attacks outside every l_p ball, each optimising its own parameters by gradient ascent on the
cross-entropy within its own budget (``ascent.py``).

``UNSEEN``: name -> ``attack(model, x, y, eps, *, steps, generator) -> UnseenResult``; the names
are ``workers.contract.unseen.UNSEEN_ATTACKS`` and the budgets per dataset family are there too.
Every attack takes a batch (N, 1 or 3, H, W) in [0, 1] of any size and a float or per-sample
``eps``, returns images of the same shape in [0, 1], is the identity at ``eps = 0``, draws all its
randomness from ``generator`` and never reads a tensor on the host inside its loop.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeAlias

import torch
from torch import Tensor, nn

from workers.attacks.unseen.ascent import UnseenResult
from workers.attacks.unseen.elastic import elastic_attack
from workers.attacks.unseen.fog import fog_attack
from workers.attacks.unseen.gabor import gabor_attack
from workers.attacks.unseen.jpeg import jpeg_attack
from workers.attacks.unseen.snow import snow_attack
from workers.contract.registry import Registry

UnseenAttack: TypeAlias = Callable[..., UnseenResult]
"""(model, x, y, eps, *, steps=..., generator=None) -> UnseenResult"""

UNSEEN: Registry[UnseenAttack] = Registry("unseen attack")
UNSEEN.add("jpeg-linf", partial(jpeg_attack, norm="linf"))
UNSEEN.add("jpeg-l1", partial(jpeg_attack, norm="l1"))
UNSEEN.add("fog", fog_attack)
UNSEEN.add("snow", snow_attack)
UNSEEN.add("gabor", gabor_attack)
UNSEEN.add("elastic", elastic_attack)


def unseen_attack(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *,
                  steps: int, generator: torch.Generator | None = None) -> UnseenResult:
    """Run the registered unseen attack ``name`` (raises ``UnknownNameError`` listing the names)."""
    return UNSEEN.get(name)(model, x, y, eps, steps=steps, generator=generator)


__all__ = ["UNSEEN", "UnseenAttack", "UnseenResult", "unseen_attack"]
