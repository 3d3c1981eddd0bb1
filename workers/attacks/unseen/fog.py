"""Adversarial fog (Kang et al. 2019): a diamond-square fog map whose random offsets -- three
(N, 2^i, 2^i) arrays per level i, each in [0, 1] -- are the attack's parameters, blended into
the image with strength ``eps``.

The map is built on the smallest power of two strictly above the image's larger side (the
reference's 64 for 32 pixels, 256 for 224) and cropped, centred, to the image; offsets enter at
amplitude ``wibble`` (100, divided by the decay, 2, at every level) and the map is rescaled to
[0, 1]. Blend: ``(x + eps * fog) * m / (m + eps)`` with ``m`` the image's maximum, which keeps the
image's peak brightness (the reference divides by ``m + eps`` and rescales to the full range,
which changes an image even at ``eps = 0``; ours is the identity there). Signed-gradient ascent
on the offsets, step ``0.4472 / steps`` (the reference's 0.002236 at 200 steps), each offset
clipped to [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from workers.attacks.common import per_sample
from workers.attacks.unseen.ascent import UnseenResult, ascend, check_images, signed_step, uniform

WIBBLE_DECAY = 2.0
TOTAL_TRAVEL = 0.4472  # step * steps: the reference's 0.002236 per step at 200 steps


def map_size(height: int, width: int) -> int:
    return 1 << (int(math.floor(math.log2(max(height, width)))) + 1)


def fog_map(offsets: list[Tensor], size: int, wibble_decay: float = WIBBLE_DECAY) -> Tensor:
    """(N, 1, size, size) diamond-square maps in [0, 1] from ``offsets`` (3 per level, level i of
    shape (N, 2^i, 2^i)); differentiable in the offsets."""
    n = offsets[0].shape[0]
    maps = offsets[0].new_zeros((n, size, size))
    step, wibble, k = size, 100.0, 0

    def wibbled_mean(total: Tensor, offset: Tensor) -> Tensor:
        return total / 4 + wibble * (2 * offset - 1)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        square = corners + torch.roll(corners, -1, 1)
        square = square + torch.roll(square, -1, 2)
        maps[:, half:size:step, half:size:step] = wibbled_mean(square, offsets[k])
        centres = maps[:, half:size:step, half:size:step]
        corners = maps[:, 0:size:step, 0:size:step]
        left = centres + torch.roll(centres, 1, 1) + corners + torch.roll(corners, -1, 2)
        top = centres + torch.roll(centres, 1, 2) + corners + torch.roll(corners, -1, 1)
        maps = maps.clone()  # the sums above read the map; the writes below must not alter them
        maps[:, 0:size:step, half:size:step] = wibbled_mean(left, offsets[k + 1])
        maps[:, half:size:step, 0:size:step] = wibbled_mean(top, offsets[k + 2])
        step, wibble, k = half, wibble / wibble_decay, k + 3
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - low) / (high - low).clamp_min(1e-12))[:, None]


def render(x: Tensor, offsets: list[Tensor], eps: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    size = map_size(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    fog = fog_map(offsets, size)[:, :, top:top + h, left:left + w]
    e = eps.view(-1, 1, 1, 1)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + e * fog) * peak / (peak + e).clamp_min(1e-12)).clamp(0, 1)


def fog_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *, steps: int = 200,
               generator: torch.Generator | None = None) -> UnseenResult:
    """Adversarial fog of strength ``eps`` (a float or per sample); ``params`` are the offsets."""
    check_images(x, y)
    x = x.detach()
    radius = per_sample(eps, x)
    size = map_size(*x.shape[-2:])
    levels = int(math.log2(size))
    offsets = [uniform((x.shape[0], 2**i, 2**i), generator, x.device)
               for i in range(levels) for _ in range(3)]
    step = torch.full_like(radius, TOTAL_TRAVEL / max(steps, 1))

    def update(params: list[Tensor], grads: list[Tensor], it: int) -> list[Tensor]:
        return [p.clamp(0, 1) for p in signed_step(params, grads, step)]

    return ascend(model, y, offsets, lambda p: render(x, p, radius), update, steps)
