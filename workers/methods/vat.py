"""VAT, virtual adversarial training (Miyato et al. 2018): CE(x, y) + lambda * KL(p(x) || p(x + r_adv)).

r_adv = eps * g / ||g||_2 with g the power-iteration estimate of the dominant eigenvector of the
KL's Hessian at r = 0: from a random Gaussian direction d, ``vat.power_iters`` times
d <- normalise(grad_r KL(p(x) || p(x + r)) at r = xi * d). No label enters r_adv or the
regulariser; p(x) is a constant there (the paper's "current estimate"). eps is the spec's l_2
radius (Miyato et al.'s MNIST value is 2.0, the project's MNIST l_2 radius): VAT's perturbation is
an l_2 object, so the method is single-norm. As in the paper, x + r_adv is not clipped to the box.
The power iteration runs in eval mode (the project's convention for training attacks).

VAT is a smoothness regulariser, not an attack on the labels, so it reports no training robust
accuracy. ``parts``: ``ce``, ``vat`` (the LDS term).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from workers.attacks.common import as_image, eval_mode, flat
from workers.methods.base import Method, MethodContext, StepOutput
from workers.methods.common import NormSampler, method_seed, param, unwrap
from workers.methods.losses import kl_per_sample, vat_loss
from workers.methods.registry import METHODS

_TINY = 1e-12


def unit_l2(v: Tensor) -> Tensor:
    return v / as_image(flat(v).norm(dim=1) + _TINY, v)


def vat_direction(model: nn.Module, x: Tensor, start: Tensor, xi: float, iters: int) -> Tensor:
    """The power-iteration direction (unit l_2 per sample) from the random ``start``."""
    x = x.detach()
    with eval_mode(model), torch.enable_grad():
        with torch.no_grad():
            z = model(x)
        d = unit_l2(start)
        for _ in range(iters):
            r = (xi * d).requires_grad_(True)
            (grad,) = torch.autograd.grad(kl_per_sample(z, model(x + r)).sum(), r)
            d = unit_l2(grad)
    return d.detach()


@METHODS.register("vat")
class VAT(Method):
    name = "vat"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.lam = float(param(ctx, "vat.lambda"))
        self.xi = float(param(ctx, "vat.xi"))
        self.iters = int(param(ctx, "vat.power_iters"))
        if "l2" not in ctx.epsilons:
            raise KeyError(f"vat needs an l2 epsilon (its radius); given: {sorted(ctx.epsilons)}")
        self.sampler = NormSampler(method_seed(ctx.seed, "vat"))

    def compute_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        start = torch.randn(x.shape, generator=self.sampler.generator, dtype=x.dtype).to(x.device)
        d = vat_direction(unwrap(model), x, start, self.xi, self.iters)
        eps = float(self.ctx.epsilons["l2"]) * self.radius_scale
        z_clean, z_adv = model(x), model(x + eps * d)
        loss, ce, lds = vat_loss(z_clean, z_adv, y, self.lam)
        return StepOutput(loss=loss, parts={"ce": ce.detach(), "vat": lds.detach()})

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
