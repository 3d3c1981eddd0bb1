"""APGD in its training form (docs: ramp-spec.md, "Training-time attack: APGD").

Start at x (no random init, no restarts) and return, per sample, the iterate with the highest
loss together with that loss. Everything per-sample (step sizes, restarts, sparsity) is a tensor
updated with masks, and the checkpoint schedule depends only on ``n_iter``, so the loop never
reads a value on the host.

Choices where the reference code (AutoAttack / robust-finetuning ``apgd_train``) is looser than
the spec:
- Checkpoints scale with ``n_iter`` as in the reference: first after max(int(0.22 n), 1)
  iterations, then the window shrinks by max(int(0.03 n), 1) down to max(int(0.06 n), 1). For the
  training form (n = 10) this is "after 2 iterations, then every iteration". l_1 adapts every
  max(int(0.04 n), 1) iterations (every iteration for n <= 49).
- "Recent steps that increased the loss" compares consecutive losses including the loss at x;
  the reference compares the first step with a zero-initialised slot (always an increase for CE).
- l_2 projects exactly onto ball ∩ box (see projections.py); the reference clips after the ball.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from workers.attacks.common import Objective, as_image, eval_mode, flat, loss_and_grad, loss_only, per_sample
from workers.attacks.losses import LOSSES
from workers.attacks.projections import project, project_l1_box
from workers.attacks.registry import ATTACKS
from workers.attacks.result import AttackResult
from workers.attacks.steepest import l2_direction, linf_direction
from workers.registry import Registry

_MOMENTUM = 0.75  # weight of the new projected step; 0.25 on the previous displacement
_RHO = 0.75  # a checkpoint cuts the step if at most this share of recent steps increased the loss
_L1_SHRINK = 0.95  # l_1 restarts when ||x_best - x||_0 fell below this share of its last value
_L1_STEP_DECAY = 1.5
_L1_MIN_STEP = 0.1  # of eps
_L1_SPARSITY_SLACK = 1.5  # next top-k fraction = ||x_best - x||_0 / (1.5 d)


@dataclass(frozen=True)
class _Problem:
    model: nn.Module
    objective: Objective
    x: Tensor
    y: Tensor
    y_target: Tensor | None
    eps: Tensor  # (N,)

    def loss_grad(self, x_adv: Tensor) -> tuple[Tensor, Tensor]:
        return loss_and_grad(self.model, self.objective, x_adv, self.y, self.y_target)

    def loss(self, x_adv: Tensor) -> Tensor:
        return loss_only(self.model, self.objective, x_adv, self.y, self.y_target)


Runner = Callable[[_Problem, int, float], AttackResult]
_RUNNERS: Registry[Runner] = Registry("APGD norm")


@ATTACKS.register("apgd")
def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float | Tensor,
    n_iter: int = 10,
    *,
    loss: str = "ce",
    l1_sparsity: float = 0.05,
    y_target: Tensor | None = None,
) -> AttackResult:
    """The highest-loss point APGD finds in the ``norm`` ball of radius ``eps`` (float or (N,))
    around x, intersected with [0,1]; ``loss`` is the per-sample objective there (detached).

    ``l1_sparsity`` is the initial top-k fraction of l1-APGD (0.05 in training, 0.2 in fast
    evaluation). With ``y_target`` the loss is the targeted form.
    """
    if n_iter < 1:
        raise ValueError(f"APGD needs n_iter >= 1, got {n_iter}")
    if not 0 < l1_sparsity <= 1:
        raise ValueError(f"l1_sparsity must be in (0, 1], got {l1_sparsity}")
    run = _RUNNERS.get(norm)
    x = x.detach()
    problem = _Problem(model, LOSSES.get(loss), x, y, y_target, per_sample(eps, x))
    with eval_mode(model):
        return run(problem, n_iter, l1_sparsity)


def checkpoint_schedule(n_iter: int) -> dict[int, int]:
    """{iteration index after which a checkpoint runs: number of steps it looks back over}."""
    window = max(int(0.22 * n_iter), 1)
    smallest, shrink = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    schedule, i = {}, window - 1
    while i < n_iter:
        schedule[i] = window
        window = max(window - shrink, smallest)
        i += window
    return schedule


def l1_adapt_every(n_iter: int) -> int:
    return max(int(0.04 * n_iter), 1)


def _where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(as_image(mask, new), new, old)


def _assess(p: _Problem, x_adv: Tensor, last: bool, x_best: Tensor, loss_best: Tensor
            ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    """Loss at ``x_adv`` (and its gradient, except after the last iteration, where none is
    needed) and the best iterate so far: ``(loss, grad, improved, x_best, loss_best)``."""
    loss, grad = (p.loss(x_adv), None) if last else p.loss_grad(x_adv)
    improved = loss > loss_best
    return loss, grad, improved, _where(improved, x_adv, x_best), torch.where(improved, loss, loss_best)


def _apgd_momentum(
    p: _Problem, n_iter: int, l1_sparsity: float, *, norm: str, direction: Callable[..., Tensor]
) -> AttackResult:
    del l1_sparsity
    x, eps = p.x, p.eps
    step = 2 * eps
    x_adv = x.clamp(0, 1)
    loss, grad = p.loss_grad(x_adv)
    x_best, loss_best, grad_best = x_adv, loss, grad
    x_prev = x_adv
    history = [loss]
    best_at_check = loss_best
    cut_at_check = torch.ones_like(loss, dtype=torch.bool)  # no "no improvement" cut at the first check
    schedule = checkpoint_schedule(n_iter)
    for i in range(n_iter):
        a = _MOMENTUM if i > 0 else 1.0
        displacement, x_prev = x_adv - x_prev, x_adv
        delta = x_adv - x
        ascent = as_image(step, x) * direction(x, delta, grad, step, None)
        stepped = x + project(norm, x, delta + ascent, eps)
        moved = x_adv + a * (stepped - x_adv) + (1 - a) * displacement
        x_adv = (x + project(norm, x, moved - x, eps)).clamp(0, 1)
        last = i == n_iter - 1
        loss, grad, improved, x_best, loss_best = _assess(p, x_adv, last, x_best, loss_best)
        if last:
            break
        grad_best = _where(improved, grad, grad_best)
        history.append(loss)
        window = schedule.get(i)
        if window is None:
            continue
        recent = torch.stack(history[-window - 1 :])
        increases = (recent[1:] > recent[:-1]).sum(0)
        cut = (increases <= _RHO * window) | (~cut_at_check & (best_at_check >= loss_best))
        cut_at_check, best_at_check = cut, loss_best
        step = torch.where(cut, step / 2, step)
        x_adv, grad = _where(cut, x_best, x_adv), _where(cut, grad_best, grad)
    return AttackResult(x_best.detach(), loss_best.detach())


def _sparse_sign(grad: Tensor, fraction: Tensor) -> Tensor:
    """sign(grad) on the top ``fraction`` of coordinates by |grad| (per sample), 0 elsewhere."""
    magnitude = flat(grad).abs()
    d = magnitude.shape[1]
    rank = ((1 - fraction) * d).clamp(0, d - 1).long()
    threshold = magnitude.sort(dim=1).values.gather(1, rank[:, None])
    return torch.sign(grad) * (magnitude >= threshold).view_as(grad)


def _apgd_l1(p: _Problem, n_iter: int, l1_sparsity: float) -> AttackResult:
    x, eps = p.x, p.eps
    d = x[0].numel()
    step = eps.clone()
    fraction = torch.full_like(eps, l1_sparsity)
    support_before = torch.full_like(eps, float(d))
    x_adv = x.clamp(0, 1)
    loss, grad = p.loss_grad(x_adv)
    x_best, loss_best, grad_best = x_adv, loss, grad
    every = l1_adapt_every(n_iter)
    for i in range(n_iter):
        signs = _sparse_sign(grad, fraction)
        per_coordinate = step / (flat(signs).abs().sum(1) + 1e-10)
        x_adv = (x + project_l1_box(x, x_adv - x + as_image(per_coordinate, x) * signs, eps)).clamp(0, 1)
        last = i == n_iter - 1
        loss, grad, improved, x_best, loss_best = _assess(p, x_adv, last, x_best, loss_best)
        if last:
            break
        grad_best = _where(improved, grad, grad_best)
        if (i + 1) % every:
            continue
        support = (flat(x_best - x) != 0).sum(1).to(eps.dtype)
        shrank = support < _L1_SHRINK * support_before
        fraction, support_before = support / (_L1_SPARSITY_SLACK * d), support
        step = torch.where(shrank, eps, step / _L1_STEP_DECAY)
        step = torch.minimum(torch.maximum(step, _L1_MIN_STEP * eps), eps)
        x_adv, grad = _where(shrank, x_best, x_adv), _where(shrank, grad_best, grad)
    return AttackResult(x_best.detach(), loss_best.detach())


_RUNNERS.add("linf", partial(_apgd_momentum, norm="linf", direction=linf_direction))
_RUNNERS.add("l2", partial(_apgd_momentum, norm="l2", direction=l2_direction))
_RUNNERS.add("l1", _apgd_l1)
