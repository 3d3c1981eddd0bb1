"""Adversarial snow (Kang et al. 2019): flake intensities on a sparse grid -- seven sub-grids of
period 4, one per flake kernel -- are the attack's parameters; their fourth powers, convolved
with seven blurred line kernels (13x13, random direction, width 1/3/5, one random mirror for
all), make a snow layer added to every channel with strength ``eps``.

Intensities live in [0, 1] and, per 8x8 block of the intensity grid, their mean is capped at
``FLAKE_BUDGET`` (0.2, the reference's): a block above the cap is scaled down onto it. Start:
``exp(-U / 0.2)``, U uniform, projected; signed-gradient ascent, step ``0.4472 / steps`` (the
reference's 0.002236 at 200 steps). The reference also whitens the image by a fixed 25 %
whatever ``eps``; we leave that out, so ``eps = 0`` is the identity and the whole change is the
learnt snow. Kernels are drawn once per batch from the attack's generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import per_sample
from workers.attacks.unseen.ascent import UnseenResult, ascend, check_images, signed_step, uniform
from workers.attacks.unseen.fft import correlate

FLAKE_BUDGET = 0.2
KERNEL_SIZE = 13
BLOCK = 8
FLAKES = 7
PERIOD = 4
TOTAL_TRAVEL = 0.4472


def line_kernels(generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(1, 7, 13, 13) anti-aliased line segments through the centre, each Gaussian-blurred."""
    mid = KERNEL_SIZE // 2
    coords = torch.arange(KERNEL_SIZE, dtype=torch.float32) - mid
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    u = uniform((FLAKES, 4), generator, torch.device("cpu"))
    flip = bool(uniform((1,), generator, torch.device("cpu"))[0] < 0.5)
    kernels = []
    for i in range(FLAKES):
        end_r = 2 + torch.floor(u[i, 0] * (mid - 1))  # 2..mid
        end_c = 2 + torch.floor(u[i, 1] * (mid - 1))
        width = 1.0 if u[i, 2] < 0.6 else (3.0 if u[i, 2] < 0.9 else 5.0)
        sigma = 0.41 + 0.19 * float(u[i, 3])
        # Distance of every pixel to the segment from -end to +end.
        length2 = end_r**2 + end_c**2
        t = ((rows * end_r + cols * end_c) / length2).clamp(-1, 1)
        dist = torch.sqrt((rows - t * end_r) ** 2 + (cols - t * end_c) ** 2)
        line = (1 + width / 2 - dist).clamp(0, 1)
        radius = max(1, math.ceil(2 * sigma))
        g = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
        g = g / g.sum()
        blurred = F.conv2d(line[None, None], (g[:, None] * g[None, :])[None, None], padding=radius)[0, 0]
        kernels.append(blurred.flip(1) if flip else blurred)
    return torch.stack(kernels)[None].to(device)


def grid_shape(height: int, width: int) -> tuple[int, int]:
    return -(-height // PERIOD), -(-width // PERIOD)


def flake_grid(intensities: Tensor, height: int, width: int) -> Tensor:
    """(N, 7, H, W): intensity^4 of each flake at its sub-grid position, zero elsewhere."""
    n = intensities.shape[0]
    powered = intensities**4
    grid = powered.new_zeros((n, FLAKES, height, width))
    for i in range(FLAKES):
        r0, c0 = (0, i) if i < 4 else (i - 3, 0)
        rows, cols = len(range(r0, height, PERIOD)), len(range(c0, width, PERIOD))
        grid[:, i, r0::PERIOD, c0::PERIOD] = powered[:, i, :rows, :cols]
    return grid


def snow_layer(intensities: Tensor, kernels: Tensor, height: int, width: int) -> Tensor:
    pad = KERNEL_SIZE // 2
    return correlate(F.pad(flake_grid(intensities, height, width), (pad,) * 4), kernels)


def cap_blocks(intensities: Tensor, budget: float = FLAKE_BUDGET) -> Tensor:
    """Intensities in [0, 1] whose mean over every 8x8 block of each flake's grid is <= budget."""
    v = intensities.clamp(0, 1)
    gh, gw = v.shape[-2:]
    means = F.avg_pool2d(v, BLOCK, ceil_mode=True)
    scale = budget / means.clamp_min(budget)
    scale = scale.repeat_interleave(BLOCK, dim=-2).repeat_interleave(BLOCK, dim=-1)[..., :gh, :gw]
    return v * scale


def render(x: Tensor, intensities: Tensor, kernels: Tensor, eps: Tensor) -> Tensor:
    snow = snow_layer(intensities, kernels, x.shape[-2], x.shape[-1])
    return (x + eps.view(-1, 1, 1, 1) * snow).clamp(0, 1)


def snow_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *, steps: int = 200,
                generator: torch.Generator | None = None) -> UnseenResult:
    """Adversarial snow of strength ``eps`` (a float or per sample); ``params[0]`` are the flake
    intensities (N, 7, ceil(H / 4), ceil(W / 4)) and ``params[1]`` the kernels (fixed)."""
    check_images(x, y)
    x = x.detach()
    radius = per_sample(eps, x)
    kernels = line_kernels(generator, x.device).to(x.dtype)
    shape = (x.shape[0], FLAKES, *grid_shape(*x.shape[-2:]))
    start = cap_blocks(torch.exp(-uniform(shape, generator, x.device) / FLAKE_BUDGET))
    step = torch.full_like(radius, TOTAL_TRAVEL / max(steps, 1))

    def update(params: list[Tensor], grads: list[Tensor], it: int) -> list[Tensor]:
        return [cap_blocks(signed_step(params[:1], grads[:1], step)[0])]

    result = ascend(model, y, [start], lambda p: render(x, p[0], kernels, radius), update, steps)
    return UnseenResult(result.x_adv, [*result.params, kernels.expand(x.shape[0], -1, -1, -1)])
