"""What every attack returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class AttackResult:
    """``x_adv`` is the best iterate found (highest per-sample loss, inside ball and box) and
    ``loss`` the attack's per-sample objective at ``x_adv``; both detached."""

    x_adv: Tensor
    loss: Tensor
