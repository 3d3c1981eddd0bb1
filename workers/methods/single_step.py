"""One-step attacks: FGSM (Goodfellow et al. 2015) and FGSM from a random start (Wong et al. 2020).

From the start point (x itself, or a random point of the ball ∩ box) one steepest-ascent step of
the cross-entropy of the given length, projected onto the ball ∩ box. Eval mode, like the
project's other training attacks. Lengths are in the norm's own units: per coordinate for l_inf
(FGSM: eps), Euclidean for l_2, and for l_1 spread over the top ``sparsity`` share of coordinates
by |gradient| (the sparse l_1 direction of our PGD), so the step's l_1 length is the given length.
Random starts: l_inf uniform per coordinate in [-eps, eps] (Wong et al.), l_2 / l_1 AutoAttack's
random start of that norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks import AttackResult, steepest_step
from workers.attacks.common import eval_mode
from workers.attacks.standard import random_start
from workers.contract.norms import Norm


def l1_coordinates(sparsity: float, dim: int) -> int:
    return max(1, round(sparsity * dim))


def step_size(norm: Norm, length: float, dim: int, sparsity: float) -> tuple[float, int | None]:
    """(steepest_step's step, its k) for a step of ``length`` in ``norm``."""
    if norm != "l1":
        return length, None
    k = l1_coordinates(sparsity, dim)
    return length / k, k


def random_point(norm: Norm, x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """A random start inside the ``norm`` ball of radius ``eps`` around x, inside the box."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (x + (2 * u - 1) * eps).clamp(0, 1)
    return random_start(norm, x, torch.full((len(x),), eps, dtype=x.dtype, device=x.device), generator)


def one_step_attack(model: nn.Module, x: Tensor, y: Tensor, norm: Norm, eps: float, length: float, *,
                    sparsity: float, start: Tensor | None = None) -> AttackResult:
    """One CE ascent step of ``length`` from ``start`` (default: x), projected onto ball ∩ box;
    ``loss`` is the per-sample CE at the result (what MAX-style selection compares)."""
    x = x.detach()
    origin = x if start is None else start.detach()
    step, k = step_size(norm, length, x[0].numel(), sparsity)
    with eval_mode(model), torch.enable_grad():
        point = origin.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(point), y, reduction="sum"), point)
        delta = steepest_step(norm, x, origin - x, grad, step, k=k, eps=eps)
        x_adv = (x + delta).detach()
        with torch.no_grad():
            loss = F.cross_entropy(model(x_adv), y, reduction="none")
    return AttackResult(x_adv=x_adv, loss=loss)
