"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(p(x) || p(x')), x' maximising the KL.

Inner maximisation (eval mode, as in the reference): the clean prediction p(x) is fixed; from
x + 0.001 * N(0, 1) (projected onto the ``trades.norm`` ball ∩ box; the noise comes from the
method's own generator, saved in ``state_dict``) take ``trades.steps`` steepest-ascent steps of
KL(p(x) || p(x')), each projected onto the ball ∩ box.

Step: 2.5 * eps / steps in the norm's own length (10 steps: 0.25 eps; the reference's CIFAR-10
l_inf step 0.007 at eps 0.031 is 0.23 eps); for l_1 the length is spread over the top 5% of
coordinates by |gradient|, like our PGD. The attack keeps the last iterate (the reference does).

Outer loss (train mode, two forwards like the reference): ``CE(f(x), y) + beta * mean KL(p(x) ||
p(x'))`` with gradients through both distributions; ``parts``: ``ce``, ``trades`` (the KL).
Robust count: the train-mode prediction on x' for ``trades.norm``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import eval_mode
from workers.contract.norms import NORMS, Norm
from workers.methods.base import Method, MethodContext, StepOutput
from workers.methods.common import NormSampler, correct_count, method_seed, param, unwrap
from workers.methods.losses import kl_batchmean, kl_per_sample
from workers.methods.registry import METHODS

INIT_SCALE = 0.001
STEP_FACTOR = 2.5  # times eps / steps
L1_TOP_FRACTION = 0.05

StepFn = Callable[..., Tensor]  # steepest_step(norm, x, delta, grad, step, *, k, eps) -> delta
ProjectFn = Callable[[str, Tensor, Tensor, float], Tensor]


def step_split(norm: Norm, eps: float, steps: int, dim: int) -> tuple[float, int | None]:
    """(steepest_step's step, its k) for one TRADES inner step."""
    length = STEP_FACTOR * eps / steps
    if norm != "l1":
        return length, None
    k = max(1, round(L1_TOP_FRACTION * dim))
    return length / k, k


def trades_attack(
    model: nn.Module,
    x: Tensor,
    norm: Norm,
    eps: float,
    steps: int,
    noise: Tensor,
    *,
    step_fn: StepFn | None = None,
    project_fn: ProjectFn | None = None,
) -> Tensor:
    """x' maximising KL(p(x) || p(x')) in the ball, starting from x + ``noise`` (projected)."""
    if step_fn is None or project_fn is None:
        from workers.attacks import project, steepest_step

        step_fn, project_fn = step_fn or steepest_step, project_fn or project
    step, k = step_split(norm, eps, steps, x[0].numel())
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            z_clean = model(x)
        delta = project_fn(norm, x, noise, eps)
        for _ in range(steps):
            with torch.enable_grad():
                d = delta.detach().requires_grad_(True)
                kl = kl_per_sample(z_clean, model(x + d)).sum()
                (grad,) = torch.autograd.grad(kl, d)
            delta = step_fn(norm, x, delta, grad, step, k=k, eps=eps)
    return (x + delta).detach()


@METHODS.register("trades")
class TRADES(Method):
    name = "trades"

    def __init__(
        self, ctx: MethodContext, *, step_fn: StepFn | None = None, project_fn: ProjectFn | None = None
    ) -> None:
        super().__init__(ctx)
        self.step_fn, self.project_fn = step_fn, project_fn
        self.beta = float(param(ctx, "trades.beta"))
        self.steps = int(param(ctx, "trades.steps"))
        self.norm: Norm = param(ctx, "trades.norm")
        if self.norm not in NORMS:
            raise ValueError(f"trades.norm must be one of {NORMS}, got {self.norm!r}")
        try:
            self.eps = float(ctx.epsilons[self.norm])
        except KeyError:
            raise KeyError(f"no epsilon for trades.norm {self.norm!r}; have {sorted(ctx.epsilons)}") from None
        self.sampler = NormSampler(method_seed(self.ctx.seed, "trades"))

    def noise(self, x: Tensor) -> Tensor:
        return (INIT_SCALE * torch.randn(x.shape, generator=self.sampler.generator)).to(x.device, x.dtype)

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        x_adv = trades_attack(
            self.twin(unwrap(model)), x, self.norm, self.eps * self.radius_scale, self.steps, self.noise(x),
            step_fn=self.step_fn, project_fn=self.project_fn,
        )
        z_clean = model(x)
        z_adv = model(x_adv)
        ce = F.cross_entropy(z_clean, y)
        kl = kl_batchmean(z_clean, z_adv)
        return StepOutput(
            loss=ce + self.beta * kl,
            parts={"ce": ce.detach(), "trades": kl.detach()},
            robust_correct={self.norm: correct_count(z_adv, y)},
            attacked={self.norm: int(y.shape[0])},
        )

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
