"""APGD (Croce & Hein 2020; l_1: "Mind the box", 2021), one run on a batch.

Used in two forms (``docs/methods.md#the-training-attack-apgd-training-form``):
- training: start at x (no random init, no restarts), 10 iterations, return the highest-loss
  iterate and its loss (``apgd(...)``);
- evaluation: AutoAttack's runs start at a random point ``x_init`` (and l_1 walks down a radius
  schedule), see ``workers.attacks.standard``. Both forms share this loop.

Every run also tracks, per sample, whether *any* iterate it evaluated (the start included) was
misclassified (``AttackResult.robust``) and keeps the most confidently misclassified iterate
(``x_fooled``): an evaluation counts a point as robust only if no iterate fooled it, and E-AT's
norm sampling reads that same statistic.

Everything per-sample (step sizes, restarts, sparsity) is a tensor updated with masks, and the
checkpoint schedule depends only on ``n_iter``, so the loop never reads a value on the host.

Choices where the reference code (AutoAttack / robust-finetuning ``apgd_train``) is looser than
the spec:
- Checkpoints scale with ``n_iter`` as in the reference: first after max(int(0.22 n), 1)
  iterations, then the window shrinks by max(int(0.03 n), 1) down to max(int(0.06 n), 1). For the
  training form (n = 10) this is "after 2 iterations, then every iteration". l_1 adapts every
  max(int(0.04 n), 1) iterations (every iteration for n <= 49).
- "Recent steps that increased the loss" compares consecutive losses including the loss at the
  start; the reference compares the first step with a zero-initialised slot.
- l_2 projects exactly onto ball ∩ box (see projections.py); the reference clips after the ball.
- The last iterate gets a forward pass only: its gradient would never be used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from workers.attacks.common import (
    Objective,
    as_image,
    eval_mode,
    flat,
    logits_and_loss,
    logits_loss_and_grad,
    margin,
    per_sample,
)
from workers.attacks.losses import LOSSES
from workers.attacks.projections import project, project_l1_box
from workers.attacks.registry import ATTACKS
from workers.attacks.result import AttackResult
from workers.attacks.steepest import l2_direction, linf_direction
from workers.contract.registry import Registry

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


class _Iterates:
    """The best iterate by loss, and the misclassification record, updated without host reads."""

    def __init__(self, p: _Problem, x_adv: Tensor, last: bool) -> None:
        self.p = p
        loss, self.grad, logits = self._evaluate(x_adv, last)
        self.x_best, self.loss_best, self.grad_best = x_adv, loss, self.grad
        self.loss = loss
        self.robust = torch.ones_like(loss, dtype=torch.bool)
        self.margin_best = torch.full_like(loss, float("-inf"))
        self.x_fooled = x_adv
        self._record_predictions(x_adv, logits)

    def _evaluate(self, x_adv: Tensor, last: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        p = self.p
        if last:
            loss, logits = logits_and_loss(p.model, p.objective, x_adv, p.y, p.y_target)
            return loss, None, logits
        return logits_loss_and_grad(p.model, p.objective, x_adv, p.y, p.y_target)

    def _record_predictions(self, x_adv: Tensor, logits: Tensor) -> None:
        wrong = logits.argmax(dim=1) != self.p.y
        m = margin(logits, self.p.y).to(self.margin_best.dtype)
        better = wrong & (m > self.margin_best)
        self.robust = self.robust & ~wrong
        self.x_fooled = _where(better, x_adv, self.x_fooled)
        self.margin_best = torch.where(better, m, self.margin_best)

    def step(self, x_adv: Tensor, last: bool) -> Tensor:
        """Evaluate a new iterate (no gradient after the last one); returns "loss improved"."""
        self.loss, self.grad, logits = self._evaluate(x_adv, last)
        self._record_predictions(x_adv, logits)
        improved = self.loss > self.loss_best
        self.x_best = _where(improved, x_adv, self.x_best)
        self.loss_best = torch.where(improved, self.loss, self.loss_best)
        if self.grad is not None:
            self.grad_best = _where(improved, self.grad, self.grad_best)
        return improved

    def result(self) -> AttackResult:
        x_fooled = _where(self.robust, self.x_best, self.x_fooled)
        return AttackResult(self.x_best.detach(), self.loss_best.detach(), self.robust, x_fooled.detach())


Runner = Callable[[_Problem, int, Tensor, "float | None"], AttackResult]
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
    l1_sparsity: float | None = 0.05,
    y_target: Tensor | None = None,
    x_init: Tensor | None = None,
) -> AttackResult:
    """APGD on the ``norm`` ball of radius ``eps`` (float or (N,)) around x, intersected with
    [0,1], for ``n_iter`` iterations from ``x_init`` (default: x itself).

    ``l1_sparsity`` is the initial top-k fraction of l1-APGD (0.05 in training); None derives it
    from the start point as AutoAttack does for a given start: ||x_init - x||_0 / (1.5 d). With
    ``y_target`` the loss is the targeted form.
    """
    if n_iter < 1:
        raise ValueError(f"APGD needs n_iter >= 1, got {n_iter}")
    if l1_sparsity is not None and not 0 < l1_sparsity <= 1:
        raise ValueError(f"l1_sparsity must be in (0, 1] or None, got {l1_sparsity}")
    run = _RUNNERS.get(norm)
    x = x.detach()
    start = x if x_init is None else x_init.detach()
    if start.shape != x.shape:
        raise ValueError(f"x_init has shape {tuple(start.shape)}, x has {tuple(x.shape)}")
    problem = _Problem(model, LOSSES.get(loss), x, y, y_target, per_sample(eps, x))
    with eval_mode(model):
        return run(problem, n_iter, start.clamp(0, 1), l1_sparsity)


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


def _apgd_momentum(
    p: _Problem, n_iter: int, start: Tensor, l1_sparsity: float | None, *, norm: str,
    direction: Callable[..., Tensor],
) -> AttackResult:
    del l1_sparsity
    x, eps = p.x, p.eps
    step = 2 * eps
    x_adv = start
    it = _Iterates(p, x_adv, last=False)
    grad = it.grad
    x_prev = x_adv
    history = [it.loss]
    best_at_check = it.loss_best
    cut_at_check = torch.ones_like(it.loss, dtype=torch.bool)  # no "no improvement" cut at the first check
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
        it.step(x_adv, last)
        if last:
            break
        grad = it.grad
        history.append(it.loss)
        window = schedule.get(i)
        if window is None:
            continue
        recent = torch.stack(history[-window - 1 :])
        increases = (recent[1:] > recent[:-1]).sum(0)
        cut = (increases <= _RHO * window) | (~cut_at_check & (best_at_check >= it.loss_best))
        cut_at_check, best_at_check = cut, it.loss_best
        step = torch.where(cut, step / 2, step)
        x_adv, grad = _where(cut, it.x_best, x_adv), _where(cut, it.grad_best, grad)
    return it.result()


def _sparse_sign(grad: Tensor, fraction: Tensor) -> Tensor:
    """sign(grad) on the top ``fraction`` of coordinates by |grad| (per sample), 0 elsewhere."""
    magnitude = flat(grad).abs()
    d = magnitude.shape[1]
    rank = ((1 - fraction) * d).clamp(0, d - 1).long()
    threshold = magnitude.sort(dim=1).values.gather(1, rank[:, None])
    return torch.sign(grad) * (magnitude >= threshold).view_as(grad)


def _support(delta: Tensor) -> Tensor:
    return (flat(delta) != 0).sum(1)


def _apgd_l1(p: _Problem, n_iter: int, start: Tensor, l1_sparsity: float | None) -> AttackResult:
    x, eps = p.x, p.eps
    d = x[0].numel()
    step = eps.clone()
    x_adv = start
    if l1_sparsity is None:
        # AutoAttack with a given start point: sparsity from the start's own support.
        support_before = _support(x_adv - x).to(eps.dtype)
        fraction = support_before / (_L1_SPARSITY_SLACK * d)
    else:
        fraction = torch.full_like(eps, l1_sparsity)
        support_before = torch.full_like(eps, float(d))
    it = _Iterates(p, x_adv, last=False)
    grad = it.grad
    every = l1_adapt_every(n_iter)
    for i in range(n_iter):
        signs = _sparse_sign(grad, fraction)
        per_coordinate = step / (flat(signs).abs().sum(1) + 1e-10)
        x_adv = (x + project_l1_box(x, x_adv - x + as_image(per_coordinate, x) * signs, eps)).clamp(0, 1)
        last = i == n_iter - 1
        it.step(x_adv, last)
        if last:
            break
        grad = it.grad
        if (i + 1) % every:
            continue
        support = _support(it.x_best - x).to(eps.dtype)
        shrank = support < _L1_SHRINK * support_before
        fraction, support_before = support / (_L1_SPARSITY_SLACK * d), support
        step = torch.where(shrank, eps, step / _L1_STEP_DECAY)
        step = torch.minimum(torch.maximum(step, _L1_MIN_STEP * eps), eps)
        x_adv, grad = _where(shrank, it.x_best, x_adv), _where(shrank, it.grad_best, grad)
    return it.result()


_RUNNERS.add("linf", partial(_apgd_momentum, norm="linf", direction=linf_direction))
_RUNNERS.add("l2", partial(_apgd_momentum, norm="l2", direction=l2_direction))
_RUNNERS.add("l1", _apgd_l1)
