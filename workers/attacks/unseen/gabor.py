"""Adversarial Gabor noise (Kang et al. 2019, after Co et al.'s procedural noise): sparse
learnable values -- one in 14 pixels, drawn at random, each in [-1, 1] -- convolved with a
per-sample random Gabor kernel, spectrally normalised to [0, 1] and added to every channel with
strength ``eps``.

Kernel (23x23 on [-1/2, 1/2]^2): the sum over ``sides`` (1..10) rotations by pi/sides of
``exp(-(u^2 + v^2) / (2 (sigma + 1e-3)^2)) cos(2 pi lambda u)``, sigma ~ U(0.1, 0.4),
lambda ~ U(3, 23/4), theta ~ U(0, pi). Normalisation as Co et al.'s ``normalize_var``: the
spectral variance (the inverse FFT of the FFT of the squared deviation from the mean) gives each
pixel's contrast, deviations are divided by it (gain held fixed for the gradient, as in the
reference) and the result is min-max scaled to [0, 1]. Only the sparse positions are learnt (the
reference's mask keeps the complement, which makes the noise dense; the paper describes sparse
noise). Signed-gradient ascent, step ``0.4472 / steps`` (the reference's 0.002236 at 200 steps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import per_sample
from workers.attacks.unseen.ascent import UnseenResult, ascend, check_images, signed_step, uniform
from workers.attacks.unseen.fft import correlate

KERNEL_SIZE = 23
DENSITY = 1 / 14
TOTAL_TRAVEL = 0.4472
_MIN_CONTRAST = 1e-3


def gabor_kernels(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(n, 1, 23, 23) random multi-sided Gabor kernels, one per sample."""
    cpu = torch.device("cpu")
    u = uniform((n, 4), generator, cpu)
    sides = 1 + torch.floor(u[:, 0] * 10)  # 1..10
    sigma = (0.1 + 0.3 * u[:, 1]).view(n, 1, 1, 1)
    lam = (3 + (KERNEL_SIZE / 4 - 3) * u[:, 2]).view(n, 1, 1, 1)
    theta = (math.pi * u[:, 3]).view(n, 1, 1)
    axis = torch.linspace(-0.5, 0.5, KERNEL_SIZE)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    k = torch.arange(10, dtype=torch.float32).view(1, 10, 1, 1)
    angles = theta[:, None] + math.pi * k / sides.view(n, 1, 1, 1)  # (n, 10, 1, 1)
    rot_x = xx * torch.cos(angles) + yy * torch.sin(angles)
    rot_y = -xx * torch.sin(angles) + yy * torch.cos(angles)
    g = torch.exp(-0.5 * (rot_x**2 + rot_y**2) / (sigma + 1e-3) ** 2) * torch.cos(2 * math.pi * lam * rot_x)
    used = (k < sides.view(n, 1, 1, 1)).float()
    return (g * used).sum(dim=1, keepdim=True).to(device)


def normalise(noise: Tensor) -> Tensor:
    """Co et al.'s spectral normalisation of (N, 1, H, W) noise, then min-max to [0, 1]."""
    h, w = noise.shape[-2:]
    mean = noise.mean(dim=(1, 2, 3), keepdim=True)
    deviation = noise - mean
    spectral = torch.fft.irfft2(torch.fft.rfft2(deviation**2), s=(h, w))
    contrast = torch.sqrt(spectral.abs())
    contrast = contrast / contrast.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    gain = ((1 + _MIN_CONTRAST) / (_MIN_CONTRAST + contrast)).detach()
    image = mean.detach() + deviation * gain
    low = image.amin(dim=(1, 2, 3), keepdim=True).detach()
    high = image.amax(dim=(1, 2, 3), keepdim=True).detach()
    return (image - low) / (high - low).clamp_min(1e-12)


def gabor_noise(values: Tensor, kernels: Tensor) -> Tensor:
    """Each sample's sparse values convolved with its own kernel (a grouped convolution)."""
    pad = KERNEL_SIZE // 2
    return normalise(correlate(F.pad(values, (pad,) * 4), kernels))


def render(x: Tensor, values: Tensor, kernels: Tensor, eps: Tensor) -> Tensor:
    return (x + eps.view(-1, 1, 1, 1) * gabor_noise(values, kernels)).clamp(0, 1)


def gabor_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *, steps: int = 200,
                 generator: torch.Generator | None = None) -> UnseenResult:
    """Adversarial Gabor noise of strength ``eps`` (a float or per sample); ``params`` are the
    sparse values (N, 1, H, W), their mask and the kernels (both fixed)."""
    check_images(x, y)
    x = x.detach()
    radius = per_sample(eps, x)
    n, _, h, w = x.shape
    kernels = gabor_kernels(n, generator, x.device).to(x.dtype)
    mask = (uniform((n, 1, h, w), generator, x.device) < DENSITY).to(x.dtype)
    start = uniform((n, 1, h, w), generator, x.device, -1.0, 1.0) * mask
    step = torch.full_like(radius, TOTAL_TRAVEL / max(steps, 1))

    def update(params: list[Tensor], grads: list[Tensor], it: int) -> list[Tensor]:
        return [signed_step(params, grads, step)[0].clamp(-1, 1) * mask]

    result = ascend(model, y, [start], lambda p: render(x, p[0], kernels, radius), update, steps)
    return UnseenResult(result.x_adv, [*result.params, mask, kernels])
