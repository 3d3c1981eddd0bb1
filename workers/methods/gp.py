"""Gradient projection (GP, from RAMP): mix each epoch's adversarial weight update with a natural one.

Per epoch (``docs/methods.md#gradient-projection-gp``):

1. ``on_epoch_start``: theta0 = the model's full ``state_dict`` (parameters and buffers, so BN
   running statistics too); the natural model is reset to theta0.
2. ``after_step``: the natural model takes one clean cross-entropy SGD step on the same batch
   with its own optimiser: the LR value the loop just used, the run's momentum, the run's weight
   decay on weights only (none on biases / normalisation parameters, the main optimiser's rule,
   ``workers.training.optim.param_groups``). Its momentum buffers persist across epochs (the
   reset copies theta0 into the same parameter tensors) and are saved in ``state_dict``.
3. The wrapped method trains the main model for the epoch, from theta0.
4. ``on_epoch_end``: ``project_state`` combines the two updates per tensor; both models load it.

``project_state`` (pure). For every floating-point tensor with at least one dimension
(parameters and BN running mean/var, as in the reference), with ``g_n = nat - theta0`` and
``g_a = adv - theta0``:

- ``formula="reference"`` (default, the reference code): ``c = cos(g_n, g_a)``;
  ``theta0 + (1 - beta) g_a + beta c g_n`` if ``c > 0`` else ``theta0 + (1 - beta) g_a``.
- ``formula="projection"`` (the paper appendix): the same with ``c g_n`` replaced by the true
  projection of ``g_a`` on ``g_n``, ``max(<g_a, g_n>, 0) g_n / ||g_n||^2``. The two differ in
  length: the reference term has length ``c ||g_n||``, the projection ``c ||g_a||``.

A zero delta on either side gives ``c = 0`` (and a zero projection), never NaN. Scalars
(``num_batches_tracked``) and non-floating tensors come from the adversarial model.

``update_cosine`` (pure) is what the per-epoch history logs (``grad_cosine``, ``grad_angle_deg``;
the paper's GP analysis reports this cosine): the cosine between the epoch's natural and adversarial
updates ``g_n``, ``g_a`` of the model's *parameters*, all tensors flattened into one vector
(buffers such as BN running statistics are left out: they are not gradients). It is a whole-model
view; the projection itself still takes one cosine per tensor.

The reference GP code crashes as published (a missing import), so there is no run to match
bit-for-bit; the rule above is what it computes. Under distributed data parallelism the natural
model's gradients are averaged across ranks like the main model's, so every rank computes the
same projected weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.contract.registry import Registry
from workers.methods.base import Method, StepOutput
from workers.methods.common import unwrap

Combine = Callable[[Tensor, Tensor, float], Tensor]
"""(g_a, g_n, beta) -> the update added to theta0."""
FORMULAS: Registry[Combine] = Registry("gradient-projection formula")


def _dot_and_norms(g_a: Tensor, g_n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a = g_a.reshape(-1).double()
    n = g_n.reshape(-1).double()
    return torch.dot(a, n), a.norm(), n.norm()


@FORMULAS.register("reference")
def reference_update(g_a: Tensor, g_n: Tensor, beta: float) -> Tensor:
    """(1 - beta) g_a + beta max(c, 0) g_n with c = cos(g_a, g_n) (c = 0 if either is zero)."""
    dot, norm_a, norm_n = _dot_and_norms(g_a, g_n)
    denom = norm_a * norm_n
    c = torch.where(denom > 0, dot / torch.where(denom > 0, denom, torch.ones_like(denom)), 0.0)
    coef = (beta * c.clamp_min(0.0)).to(g_a.dtype)
    return (1.0 - beta) * g_a + coef * g_n


@FORMULAS.register("projection")
def projection_update(g_a: Tensor, g_n: Tensor, beta: float) -> Tensor:
    """(1 - beta) g_a + beta max(<g_a, g_n>, 0) g_n / ||g_n||^2 (0 if g_n is zero)."""
    dot, _, norm_n = _dot_and_norms(g_a, g_n)
    sq = norm_n * norm_n
    coef = torch.where(sq > 0, dot.clamp_min(0.0) / torch.where(sq > 0, sq, torch.ones_like(sq)), 0.0)
    return (1.0 - beta) * g_a + (beta * coef).to(g_a.dtype) * g_n


def project_state(
    theta0: Mapping[str, Tensor],
    theta_nat: Mapping[str, Tensor],
    theta_adv: Mapping[str, Tensor],
    beta: float,
    formula: str = "reference",
) -> dict[str, Tensor]:
    """The gradient-projected state (see the module docstring); inputs are not modified."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"gp beta must be in [0, 1], got {beta}")
    combine = FORMULAS.get(formula)
    if not (theta0.keys() == theta_nat.keys() == theta_adv.keys()):
        differ = set(theta0) ^ set(theta_nat) | set(theta0) ^ set(theta_adv)
        raise ValueError(f"state dicts have different keys: {sorted(differ)}")
    out: dict[str, Tensor] = {}
    for key, adv in theta_adv.items():
        base = theta0[key]
        if adv.ndim == 0 or not adv.is_floating_point():
            out[key] = adv.detach().clone()
            continue
        if not (base.shape == theta_nat[key].shape == adv.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: theta0 {tuple(base.shape)}, natural "
                f"{tuple(theta_nat[key].shape)}, adversarial {tuple(adv.shape)}"
            )
        g_a = adv.detach() - base
        g_n = theta_nat[key].detach() - base
        out[key] = base + combine(g_a, g_n, beta)
    return out


def update_cosine(
    theta0: Mapping[str, Tensor], theta_nat: Mapping[str, Tensor], theta_adv: Mapping[str, Tensor],
    keys: Iterable[str],
) -> float:
    """cos(g_n, g_a) over ``keys`` (tensors flattened and joined); 0 when either update is zero."""
    dot = norm_a = norm_n = torch.zeros((), dtype=torch.float64)
    for key in keys:
        base = theta0[key].detach()
        g_a = (theta_adv[key].detach() - base).reshape(-1).double()
        g_n = (theta_nat[key].detach() - base).reshape(-1).double()
        dot = dot + torch.dot(g_a, g_n)
        norm_a = norm_a + torch.dot(g_a, g_a)
        norm_n = norm_n + torch.dot(g_n, g_n)
    denom = (norm_a * norm_n).sqrt()
    if not denom > 0:
        return 0.0
    return float((dot / denom).clamp(-1.0, 1.0))


def angle_degrees(cosine: float) -> float:
    """The angle whose cosine is ``cosine`` (clamped to [-1, 1]), in degrees."""
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def _average_grads_across_ranks(params: list[nn.Parameter]) -> None:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)


class GradientProjected(Method):
    """Wraps any method: the inner method trains the main model, GP mixes in a natural model."""

    def __init__(self, inner: Method, *, beta: float | None = None, formula: str | None = None) -> None:
        super().__init__(inner.ctx)
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # an instance attribute: the wrapped name
        params = inner.ctx.params
        self.beta = float(beta if beta is not None else params.get("gp.beta", 0.5))
        self.formula = str(formula if formula is not None else params.get("gp.formula", "reference"))
        FORMULAS.get(self.formula)  # fail at build time on a bad name
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"gp.beta must be in [0, 1], got {self.beta}")
        self.natural: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.theta0: dict[str, Tensor] | None = None
        self._pending: dict[str, Any] | None = None
        self._cosine: float | None = None  # of the last projected epoch

    # --- the wrapped method ---
    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        return self.inner.compute_loss(model, x, y)

    def set_radius_scale(self, scale: float) -> None:
        super().set_radius_scale(scale)
        self.inner.set_radius_scale(scale)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        self.inner.on_epoch_start(model, epoch)
        base = unwrap(model)
        self.theta0 = {k: v.detach().clone() for k, v in base.state_dict().items()}
        self._ensure_natural(base)
        assert self.natural is not None
        self.natural.load_state_dict(self.theta0)

    def after_step(self, model: nn.Module, x: Tensor, y: Tensor, lr: float) -> None:
        self.inner.after_step(model, x, y, lr)
        if self.natural is None or self.optimizer is None:
            raise RuntimeError("gradient projection: after_step called before on_epoch_start")
        self.natural.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.natural(x), y).backward()
        _average_grads_across_ranks([p for g in self.optimizer.param_groups for p in g["params"]])
        self.optimizer.step()

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        self.inner.on_epoch_end(model, epoch)
        if self.natural is None or self.theta0 is None:
            raise RuntimeError("gradient projection: on_epoch_end called before on_epoch_start")
        base = unwrap(model)
        natural, adversarial = self.natural.state_dict(), base.state_dict()
        params = [name for name, _ in base.named_parameters()]
        self._cosine = update_cosine(self.theta0, natural, adversarial, params)
        new = project_state(self.theta0, natural, adversarial, self.beta, self.formula)
        base.load_state_dict(new)
        self.natural.load_state_dict(new)
        self.theta0 = None

    def epoch_metrics(self) -> dict[str, float]:
        out = self.inner.epoch_metrics()
        if self._cosine is not None:
            out |= {"grad_cosine": self._cosine, "grad_angle_deg": angle_degrees(self._cosine)}
        return out

    # --- state ---
    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "natural": None if self.natural is None else self.natural.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self._pending = {"natural": state.get("natural"), "optimizer": state.get("optimizer")}
        if self.natural is not None:
            self._apply_pending()

    def _ensure_natural(self, base: nn.Module) -> None:
        if self.natural is not None:
            return
        from workers.training.optim import build_optimizer  # deferred: training imports methods

        natural = copy.deepcopy(base)
        for p in natural.parameters():
            p.grad = None
        self.natural = natural
        self.optimizer = build_optimizer(
            natural, lr=0.0, momentum=self.ctx.momentum, weight_decay=self.ctx.weight_decay
        )
        self._apply_pending()

    def _apply_pending(self) -> None:
        if self._pending is None:
            return
        assert self.natural is not None and self.optimizer is not None
        if self._pending["natural"] is not None:
            self.natural.load_state_dict(self._pending["natural"])
        if self._pending["optimizer"] is not None:
            self.optimizer.load_state_dict(self._pending["optimizer"])
        self._pending = None
