"""Per-sample objectives the attacks maximise: (logits, y, y_target) -> (N,) loss.

With ``y_target`` given the objective is the targeted form (move towards the target class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.attacks.common import Objective
from workers.contract.registry import Registry

LOSSES: Registry[Objective] = Registry("attack loss")

_TINY = 1e-12


@LOSSES.register("ce")
def ce_loss(logits: Tensor, y: Tensor, y_target: Tensor | None = None) -> Tensor:
    if y_target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, y_target, reduction="none")


@LOSSES.register("dlr")
def dlr_loss(logits: Tensor, y: Tensor, y_target: Tensor | None = None) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020): scale-invariant margin loss."""
    z, order = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if y_target is None:
        top_is_y = order[:, -1] == y
        z_other = torch.where(top_is_y, z[:, -2], z[:, -1])
        return -(z_y - z_other) / (z[:, -1] - z[:, -3] + _TINY)
    z_t = logits.gather(1, y_target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z[:, -1] - (z[:, -3] + z[:, -4]) / 2 + _TINY)
