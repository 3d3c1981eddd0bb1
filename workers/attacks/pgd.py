"""PGD with a random start: fixed step, steepest ascent per norm (``steepest_step``), projection
onto ball ∩ box; returns the best iterate (highest loss) like APGD.

``step_size`` is the length of one step in the attack's own norm (default 2.5 * eps / n_iter,
Madry et al.); for l_1 it is spread over the top 5% coordinates by |grad|.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from workers.attacks.common import as_image, eval_mode, flat, loss_and_grad, loss_only, per_sample
from workers.attacks.losses import ce_loss
from workers.attacks.projections import project
from workers.attacks.registry import ATTACKS
from workers.attacks.result import AttackResult
from workers.attacks.steepest import steepest_step
from workers.contract.registry import Registry

_DEFAULT_STEP = 2.5  # times eps / n_iter
_L1_TOP_FRACTION = 0.05

RandomStart = Callable[[Tensor, Tensor], Tensor]
_RANDOM_STARTS: Registry[RandomStart] = Registry("PGD random start")
"""norm -> (x, eps (N,)) -> a random perturbation inside the ball (before the box)."""

StepSplit = Callable[[int, Tensor], tuple[Tensor, int | None]]
_STEP_SPLITS: Registry[StepSplit] = Registry("PGD step split")
"""norm -> (input dimension, step length (N,)) -> (steepest_step's step, its k)."""


@_RANDOM_STARTS.register("linf")
def _uniform_box(x: Tensor, eps: Tensor) -> Tensor:
    return (2 * torch.rand_like(x) - 1) * as_image(eps, x)


def _random_radius(x: Tensor, eps: Tensor, direction: Tensor, norms: Tensor) -> Tensor:
    radius = eps * torch.rand_like(eps)
    return direction * as_image(radius / norms.clamp_min(1e-12), x)


@_RANDOM_STARTS.register("l2")
def _uniform_radius_l2(x: Tensor, eps: Tensor) -> Tensor:
    direction = torch.randn_like(x)
    return _random_radius(x, eps, direction, flat(direction).norm(dim=1))


@_RANDOM_STARTS.register("l1")
def _uniform_radius_l1(x: Tensor, eps: Tensor) -> Tensor:
    # Laplace coordinates normalised to the l_1 sphere: a uniform direction on it.
    direction = torch.sign(torch.rand_like(x) - 0.5) * torch.empty_like(x).exponential_()
    return _random_radius(x, eps, direction, flat(direction).abs().sum(1))


def _whole_step(d: int, step: Tensor) -> tuple[Tensor, int | None]:
    return step, None


def _l1_split(d: int, step: Tensor) -> tuple[Tensor, int | None]:
    k = max(1, round(_L1_TOP_FRACTION * d))
    return step / k, k


_STEP_SPLITS.add("linf", _whole_step)
_STEP_SPLITS.add("l2", _whole_step)
_STEP_SPLITS.add("l1", _l1_split)


@ATTACKS.register("pgd")
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float | Tensor,
    n_iter: int,
    *,
    step_size: float | Tensor | None = None,
    random_start: bool = True,
) -> AttackResult:
    """Cross-entropy PGD in the ``norm`` ball of radius ``eps`` ∩ [0,1]; the returned point is the
    highest-loss iterate (the start included) and ``loss`` its per-sample cross-entropy."""
    if n_iter < 1:
        raise ValueError(f"PGD needs n_iter >= 1, got {n_iter}")
    split = _STEP_SPLITS.get(norm)
    x = x.detach()
    eps_b = per_sample(eps, x)
    length = _DEFAULT_STEP * eps_b / n_iter if step_size is None else per_sample(step_size, x)
    step, k = split(x[0].numel(), length)
    delta = _RANDOM_STARTS.get(norm)(x, eps_b) if random_start else torch.zeros_like(x)
    with eval_mode(model):
        x_adv = (x + project(norm, x, delta, eps_b)).clamp(0, 1)
        loss, grad = loss_and_grad(model, ce_loss, x_adv, y, None)
        x_best, loss_best = x_adv, loss
        for i in range(n_iter):
            delta = steepest_step(norm, x, x_adv - x, grad, step, k=k, eps=eps_b)
            x_adv = (x + delta).clamp(0, 1)
            if i == n_iter - 1:
                loss = loss_only(model, ce_loss, x_adv, y, None)
            else:
                loss, grad = loss_and_grad(model, ce_loss, x_adv, y, None)
            improved = loss > loss_best
            x_best = torch.where(as_image(improved, x), x_adv, x_best)
            loss_best = torch.where(improved, loss, loss_best)
    return AttackResult(x_best.detach(), loss_best.detach())
