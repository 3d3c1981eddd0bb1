"""The optimisation every unseen adversary shares: gradient ascent of the cross-entropy over the
attack's own parameters (not pixels), each step followed by the attack's projection onto its
budget.

Per sample the best iterate is kept: one that is misclassified beats any that is not, then the
higher loss wins. Selection is done with ``torch.where`` on device tensors, so the loop never
reads a value on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import eval_mode

Params = list[Tensor]
Render = Callable[[Params], Tensor]
"""parameters -> perturbed images (N, C, H, W) in [0, 1]."""
Update = Callable[[Params, Params, int], Params]
"""(parameters, their CE gradients, iteration) -> the next parameters, inside the budget."""

# Ranks a misclassified iterate above any correctly classified one (CE is far below this).
_FOOLED_BONUS = 1e6


@dataclass(frozen=True)
class UnseenResult:
    """``x_adv``: per sample the best iterate's image (detached, in [0, 1]); ``params``: the
    parameters that rendered it (what the budget is about)."""

    x_adv: Tensor
    params: list[Tensor]


def _select(better: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(better.view(-1, *([1] * (new.ndim - 1))), new, old)


def ascend(model: nn.Module, y: Tensor, params: Sequence[Tensor], render: Render, update: Update,
           steps: int) -> UnseenResult:
    """``steps`` updates from ``params``; ``steps + 1`` iterates are scored (the start included).
    The model runs in eval mode; gradients are taken w.r.t. the parameters only."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    current = [p.detach() for p in params]
    best_x: Tensor | None = None
    best_params: list[Tensor] = []
    best_score: Tensor | None = None
    with eval_mode(model):
        for it in range(steps + 1):
            last = it == steps
            with torch.enable_grad():
                leaves = [p.requires_grad_(not last) for p in (q.detach() for q in current)]
                x_adv = render(leaves)
                logits = model(x_adv)
                loss = F.cross_entropy(logits, y, reduction="none")
                grads = None if last else torch.autograd.grad(loss.sum(), leaves)
            fooled = logits.detach().argmax(dim=1) != y
            score = loss.detach() + _FOOLED_BONUS * fooled
            if best_score is None or best_x is None:
                best_x, best_params, best_score = x_adv.detach(), [p.detach() for p in leaves], score
            else:
                better = score > best_score
                best_x = _select(better, x_adv.detach(), best_x)
                best_params = [_select(better, p.detach(), b)
                               for p, b in zip(leaves, best_params, strict=True)]
                best_score = torch.where(better, score, best_score)
            if grads is not None:
                with torch.no_grad():
                    current = update([p.detach() for p in leaves], [g.detach() for g in grads], it)
    assert best_x is not None
    return UnseenResult(best_x, best_params)


def signed_step(params: Params, grads: Params, step: Tensor) -> Params:
    """``p + step * sign(g)``, ``step`` per sample (N,)."""
    return [p + step.view(-1, *([1] * (p.ndim - 1))) * g.sign() for p, g in zip(params, grads, strict=True)]


def uniform(shape: Sequence[int], generator: torch.Generator | None, device: torch.device,
            low: float = 0.0, high: float = 1.0) -> Tensor:
    """U(low, high) drawn on the generator's device (CPU by default), so a seed gives the same
    numbers wherever the attack runs."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(tuple(shape), generator=generator, device=gen_device)
    return (low + (high - low) * u).to(device)


def normal(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=gen_device).to(device)


def check_images(x: Tensor, y: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"unseen attacks expect an (N, 1 or 3, H, W) batch, got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels of shape {tuple(y.shape)} for a batch of {x.shape[0]}")
