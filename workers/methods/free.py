"""Free AT (Shafahi et al. 2019): each batch is replayed m times; every replay's one backward pass
gives both the weight gradient and the perturbation's, and the perturbation persists across
replays and batches.

Per replay: CE(model(clip(x + delta)), y) in train mode; the loop's backward fills the weights'
gradients and ``delta.grad``; at the next call delta <- project_ball(delta + eps * dir(delta.grad))
(l_inf: eps * sign, the paper's update; l_2 / l_1: the steepest direction of that norm, of l_2
length eps / l_1 length eps over the top ``attack.l1_sparsity`` coordinates), before the forward.

The loop hands the method one batch per optimiser step, and the method trains on a batch for m
consecutive steps, ignoring the m - 1 batches the loop offers meanwhile. A run of E epochs therefore
takes E * (batches per epoch) steps on E / m passes' worth of distinct batches: the paper's "E / m
epochs with m replays" budget, except that the batches of an epoch are every m-th of the shuffled
stream rather than all of them (over m epochs each point is seen m times in expectation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import as_image, per_sample
from workers.attacks.projections import project_l1, project_l2, project_linf
from workers.attacks.steepest import DIRECTIONS
from workers.contract.norms import NORMS, Norm
from workers.methods.base import Method, MethodContext, StepOutput
from workers.methods.common import correct_count, param
from workers.methods.registry import METHODS
from workers.methods.single_step import step_size

BALL = {"linf": project_linf, "l2": project_l2, "l1": project_l1}


def free_update(norm: Norm, x: Tensor, delta: Tensor, grad: Tensor, eps: float, sparsity: float) -> Tensor:
    """delta after one ascent step of length eps in ``norm``, projected onto the eps-ball (the box
    is applied when delta is used, since delta outlives the batch it was computed on)."""
    step, k = step_size(norm, eps, x[0].numel(), sparsity)
    step_b = per_sample(step, x)
    moved = delta + as_image(step_b, x) * DIRECTIONS.get(norm)(x, delta, grad, step_b, k)
    return BALL[norm](moved, eps)


def fit_rows(delta: Tensor, n: int) -> Tensor:
    """The persistent perturbation for a batch of n rows (the last batch may be smaller or larger)."""
    if len(delta) >= n:
        return delta[:n]
    return torch.cat([delta, delta.new_zeros((n - len(delta), *delta.shape[1:]))])


@METHODS.register("free-at")
class FreeAT(Method):
    name = "free-at"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.replays = int(param(ctx, "free.replays"))
        self.norm: Norm = param(ctx, "free.norm")
        if self.norm not in NORMS:
            raise ValueError(f"free.norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm not in ctx.epsilons:
            raise KeyError(f"no epsilon for free.norm {self.norm!r}; have {sorted(ctx.epsilons)}")
        self.sparsity = float(param(ctx, "attack.l1_sparsity"))
        self.count = 0
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.delta: Tensor | None = None

    def eps(self) -> float:
        return float(self.ctx.epsilons[self.norm]) * self.radius_scale

    def _pending_update(self) -> None:
        """Apply the ascent step of the previous replay's backward (``delta.grad``)."""
        if self.delta is None or self.delta.grad is None or self.x is None:
            return
        grad, self.delta.grad = self.delta.grad, None
        n = len(self.x)
        rows = free_update(self.norm, self.x, self.delta[:n].detach(), grad[:n], self.eps(), self.sparsity)
        self.delta = torch.cat([rows, self.delta[n:].detach()]).requires_grad_(True)

    def _to(self, device: torch.device) -> None:
        """A resumed state is loaded on the CPU: follow the batches' device."""
        if self.x is None or self.y is None or self.delta is None or self.x.device == device:
            return
        grad = self.delta.grad
        self.x, self.y = self.x.to(device), self.y.to(device)
        self.delta = self.delta.detach().to(device).requires_grad_(True)
        if grad is not None:
            self.delta.grad = grad.to(device)

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        self._to(x.device)
        self._pending_update()
        if self.count % self.replays == 0 or self.x is None:
            self.x, self.y = x.detach().clone(), y.detach().clone()
            base = torch.zeros_like(self.x) if self.delta is None else fit_rows(self.delta.detach(), len(x))
            self.delta = base.to(x.device, x.dtype).requires_grad_(True)
        self.count += 1
        xb, yb, n = self.x, self.y, len(self.x)
        logits = model((xb + self.delta).clamp(0, 1))
        loss = F.cross_entropy(logits, yb)
        return StepOutput(loss=loss, parts={"ce": loss.detach()},
                          robust_correct={self.norm: correct_count(logits, yb)}, attacked={self.norm: n})

    def state_dict(self) -> dict[str, Any]:
        if self.delta is None or self.x is None or self.y is None:
            return {"count": self.count}
        grad = self.delta.grad
        return {"count": self.count, "x": self.x, "y": self.y, "delta": self.delta.detach().clone(),
                "grad": grad.clone() if grad is not None else torch.zeros_like(self.delta),
                "pending": grad is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        if "delta" not in state:
            return
        self.x, self.y = state["x"], state["y"]
        self.delta = state["delta"].clone().requires_grad_(True)
        if state["pending"]:
            self.delta.grad = state["grad"].clone()
