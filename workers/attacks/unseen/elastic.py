"""Adversarial elastic deformation (Kang et al. 2019): a flow field (N, 2, H, W), bounded in l_inf
by ``eps`` pixels, is smoothed by a Gaussian (25x25, std 3, the reference's) and warps the image
with bilinear ``grid_sample``.

The flow is kept in pixels and converted to the sampling grid's units (2 / (side - 1) per pixel,
``align_corners=True``), so a zero flow samples every pixel centre exactly: ``eps = 0`` is the
identity. The flow is padded by reflection before smoothing (replication for images too small to
reflect 12 pixels). Signed-gradient ascent from a uniform start in the box, step
``eps / sqrt(steps)`` (the reference's calibration step), clipped to the box.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import per_sample
from workers.attacks.unseen.ascent import UnseenResult, ascend, check_images, signed_step, uniform
from workers.attacks.unseen.fft import correlate

KERNEL_SIZE = 25
KERNEL_STD = 3.0


def gaussian_kernel(device: torch.device, dtype: torch.dtype) -> Tensor:
    r = torch.arange(KERNEL_SIZE, dtype=torch.float64) - KERNEL_SIZE // 2
    g = torch.exp(-(r**2) / (2 * KERNEL_STD**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(device=device, dtype=dtype).view(1, 1, KERNEL_SIZE, KERNEL_SIZE)


def smooth(flow: Tensor) -> Tensor:
    pad = KERNEL_SIZE // 2
    mode = "reflect" if min(flow.shape[-2:]) > pad else "replicate"
    padded = F.pad(flow, (pad,) * 4, mode=mode)
    n, _, h, w = padded.shape
    # Both components through the same one-channel kernel: fold them into the batch.
    out = correlate(padded.reshape(2 * n, 1, h, w), gaussian_kernel(flow.device, flow.dtype))
    return out.reshape(n, 2, *out.shape[-2:])


def render(x: Tensor, flow: Tensor) -> Tensor:
    n, _, h, w = x.shape
    smoothed = smooth(flow)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    base_y, base_x = torch.meshgrid(ys, xs, indexing="ij")
    # One pixel in grid units; a one-pixel side has no spacing and cannot move.
    unit_x = 2 / (w - 1) if w > 1 else 0.0
    unit_y = 2 / (h - 1) if h > 1 else 0.0
    grid = torch.stack((base_x + unit_x * smoothed[:, 0], base_y + unit_y * smoothed[:, 1]), dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.clamp(0, 1)


def elastic_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *, steps: int = 200,
                   generator: torch.Generator | None = None) -> UnseenResult:
    """Adversarial elastic warp with flow bounded by ``eps`` pixels (a float or per sample);
    ``params[0]`` is the flow, in pixels."""
    check_images(x, y)
    x = x.detach()
    radius = per_sample(eps, x)
    box = radius.view(-1, 1, 1, 1)
    start = uniform((x.shape[0], 2, *x.shape[-2:]), generator, x.device, -1.0, 1.0) * box
    step = radius / math.sqrt(max(steps, 1))

    def update(params: list[Tensor], grads: list[Tensor], it: int) -> list[Tensor]:
        (flow,) = signed_step(params, grads, step)
        return [torch.maximum(torch.minimum(flow, box), -box)]

    return ascend(model, y, [start], lambda p: render(x, p[0]), update, steps)
