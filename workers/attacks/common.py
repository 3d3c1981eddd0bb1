"""Plumbing shared by the attacks: eval mode, per-sample radii, loss and input gradient.

Nothing here reads a tensor's value on the host: the attacks' loops must not synchronise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

Objective = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""(logits, y, y_target) -> per-sample loss the attack maximises."""


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode and restore each module's own flag afterwards (mixed modes
    survive, e.g. a frozen BN inside a training model), also when the attack raises."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def per_sample(value: float | Tensor, x: Tensor) -> Tensor:
    """A radius (or step) as a (N,) tensor on x's device and dtype; accepts a float, a 0-d or an
    (N,) tensor."""
    out = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if out.ndim == 0:
        return out.expand(x.shape[0])
    out = out.reshape(-1)
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"per-sample value has {out.shape[0]} entries for a batch of {x.shape[0]}")
    return out


def as_image(v: Tensor, x: Tensor) -> Tensor:
    """A (N,) tensor viewed as (N, 1, ..., 1) to broadcast against x."""
    return v.view(-1, *([1] * (x.ndim - 1)))


def flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def loss_and_grad(
    model: nn.Module, objective: Objective, x_adv: Tensor, y: Tensor, y_target: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-sample loss at x_adv and its gradient w.r.t. the input only."""
    loss, grad, _ = logits_loss_and_grad(model, objective, x_adv, y, y_target)
    return loss, grad


def logits_loss_and_grad(
    model: nn.Module, objective: Objective, x_adv: Tensor, y: Tensor, y_target: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample loss at x_adv, its gradient w.r.t. the input only, and the logits (detached).

    ``torch.autograd.grad`` with the input as the only target leaves every parameter's ``.grad``
    untouched, so an attack can run in the middle of a training step.
    """
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        loss = objective(logits, y, y_target)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), grad.detach(), logits.detach()


def loss_only(
    model: nn.Module, objective: Objective, x_adv: Tensor, y: Tensor, y_target: Tensor | None
) -> Tensor:
    """The loss without a backward pass (the last iterate's gradient is never used)."""
    return logits_and_loss(model, objective, x_adv, y, y_target)[0]


def logits_and_loss(
    model: nn.Module, objective: Objective, x_adv: Tensor, y: Tensor, y_target: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(loss, logits)`` at x_adv without a backward pass."""
    with torch.no_grad():
        logits = model(x_adv)
        return objective(logits, y, y_target), logits


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Largest wrong-class logit minus the true-class logit, per sample (> 0: misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - true
