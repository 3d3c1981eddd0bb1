"""Common corruptions in the style of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019).

Every corruption is a pure function ``(x, severity, generator) -> x'``: ``x`` a float batch
(N, C, H, W) in [0, 1] with C = 1 or 3, ``severity`` in 1..5, ``generator`` a ``torch.Generator``
that supplies all randomness (so a seeded generator gives identical output). The result has the
same shape and dtype and lies in [0, 1].

Severity parameters are as in the CIFAR-10-C generation script (``make_cifar_c.py``, the 32x32
constants). Differences from that script, all deliberate:
- it works on uint8 PIL images; we work on float tensors, so only JPEG quantises to 8 bits (JPEG
  itself goes through PIL, like the script);
- its blurs use skimage / OpenCV; ours are the same kernels built in torch (Gaussian: truncate 4,
  edge-replicate border like skimage's 'nearest'; defocus: the aliased disk blurred by a 3x3
  Gaussian, reflect-101 border like ``cv2.filter2D``);
- pixelate applies PIL's BOX resampling (down to ``scale`` x size, back up) as two matrix products;
- brightness changes HSV value exactly as ``rgb2hsv -> v += c -> hsv2rgb`` would, but in closed
  form (scaling RGB by v'/v keeps hue and saturation); on one channel that is ``x + c``;
- fog draws a fresh plasma fractal per image (diamond-square, the script's constants), sized to the
  next power of two >= the image and cropped.
``saturate`` is left out: its severities are not ordered by distortion (factors 0.3, 0.1, 1.5, ...).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TypeAlias, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from workers.contract.registry import Registry

Corruption: TypeAlias = Callable[[Tensor, int, torch.Generator], Tensor]
CORRUPTIONS: Registry[Corruption] = Registry("corruption")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
T = TypeVar("T")

# CIFAR-10-C constants, one entry per severity 1..5.
GAUSSIAN_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE_RATE = (500.0, 250.0, 100.0, 75.0, 50.0)  # photons per unit intensity
IMPULSE_NOISE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_NOISE_STD = (0.06, 0.10, 0.12, 0.16, 0.20)
GAUSSIAN_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (radius, alias blur)
BRIGHTNESS_SHIFT = (0.05, 0.1, 0.15, 0.2, 0.3)
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
PIXELATE_SCALE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (strength, wibble decay)


def _level(table: tuple[T, ...], severity: int) -> T:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return table[severity - 1]


def _check_batch(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"corruptions expect an (N, 1 or 3, H, W) batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"corruptions expect a float batch in [0, 1], got {x.dtype}")


def _randn(x: Tensor, generator: torch.Generator) -> Tensor:
    # Drawn on the generator's device, so the stream does not depend on where x lives.
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


def _rand(x: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


def _depthwise(x: Tensor, kernel: Tensor, padding_mode: str) -> Tensor:
    """Convolve every channel with the same 2-D kernel (odd sizes), keeping the image size."""
    kh, kw = kernel.shape
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=padding_mode)
    weight = kernel.to(x).expand(x.shape[1], 1, kh, kw)
    return F.conv2d(padded, weight, groups=x.shape[1])


def _gaussian_1d(sigma: float, radius: int) -> Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    return (x + _level(GAUSSIAN_NOISE_STD, severity) * _randn(x, generator)).clamp(0, 1)


@CORRUPTIONS.register("shot_noise")
def shot_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    rate = _level(SHOT_NOISE_RATE, severity)
    counts = torch.poisson((x * rate).to(generator.device), generator=generator).to(x.device)
    return (counts / rate).clamp(0, 1)


@CORRUPTIONS.register("impulse_noise")
def impulse_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Salt and pepper per element (as skimage's ``random_noise(mode='s&p')``, salt share 0.5)."""
    _check_batch(x)
    flipped = _rand(x, generator) < _level(IMPULSE_NOISE_AMOUNT, severity)
    salt = (_rand(x, generator) < 0.5).to(x.dtype)
    return torch.where(flipped, salt, x)


@CORRUPTIONS.register("speckle_noise")
def speckle_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    return (x + x * _level(SPECKLE_NOISE_STD, severity) * _randn(x, generator)).clamp(0, 1)


@CORRUPTIONS.register("gaussian_blur")
def gaussian_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    sigma = _level(GAUSSIAN_BLUR_SIGMA, severity)
    radius = int(4.0 * sigma + 0.5)  # skimage / scipy: truncate = 4 standard deviations
    g = _gaussian_1d(sigma, radius)
    return _depthwise(x, torch.outer(g, g).float(), "replicate").clamp(0, 1)


def defocus_kernel(radius: float, alias_blur: float) -> Tensor:
    """The aliased disk of the given radius, normalised, then blurred by a 3x3 Gaussian."""
    half = math.ceil(radius) + 1  # one extra ring for the 3x3 alias blur to spread into
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    g = _gaussian_1d(alias_blur, 1)
    blurred = F.conv2d(disk[None, None], torch.outer(g, g)[None, None], padding=1)[0, 0]
    return (blurred / blurred.sum()).float()


@CORRUPTIONS.register("defocus_blur")
def defocus_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    radius, alias_blur = _level(DEFOCUS_BLUR, severity)
    return _depthwise(x, defocus_kernel(radius, alias_blur), "reflect").clamp(0, 1)


@CORRUPTIONS.register("brightness")
def brightness(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    value = x.amax(dim=1, keepdim=True)  # HSV value
    new_value = (value + _level(BRIGHTNESS_SHIFT, severity)).clamp(0, 1)
    # RGB is linear in V at fixed hue and saturation; black pixels (V = 0) become grey V'.
    scaled = x * (new_value / value.clamp_min(1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(x)).clamp(0, 1)


@CORRUPTIONS.register("contrast")
def contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * _level(CONTRAST_FACTOR, severity) + means).clamp(0, 1)


def box_resize_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) weights of PIL's BOX resampling along one axis.

    PIL averages the input pixels whose centres fall inside each output pixel's footprint (at
    least one pixel wide), i.e. area averaging when shrinking and nearest-centre when enlarging.
    """
    scale = n_in / n_out
    width = max(scale, 1.0)
    centres = (torch.arange(n_out, dtype=torch.float64)[:, None] + 0.5) * scale
    offsets = (torch.arange(n_in, dtype=torch.float64)[None, :] + 0.5 - centres) / width
    weights = ((offsets >= -0.5) & (offsets < 0.5)).to(torch.float64)
    return (weights / weights.sum(dim=1, keepdim=True)).float()


def _box_resize(x: Tensor, h: int, w: int) -> Tensor:
    rows = box_resize_matrix(x.shape[-2], h).to(x)
    cols = box_resize_matrix(x.shape[-1], w).to(x)
    return rows @ x @ cols.T


@CORRUPTIONS.register("pixelate")
def pixelate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    scale = _level(PIXELATE_SCALE, severity)
    h, w = x.shape[-2:]
    small = _box_resize(x, max(1, int(h * scale)), max(1, int(w * scale)))
    return _box_resize(small, h, w).clamp(0, 1)


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """One uint8 (H, W, C) image through PIL's JPEG encoder and decoder (as the script does)."""
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer))
    return decoded.reshape(pixels.shape)


@CORRUPTIONS.register("jpeg_compression")
def jpeg_compression(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    quality = _level(JPEG_QUALITY, severity)
    pixels = (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    decoded = np.stack([_jpeg_round_trip(image, quality) for image in pixels])
    return (torch.from_numpy(decoded).permute(0, 3, 1, 2).to(x.dtype) / 255).to(x.device)


def plasma_fractal(n: int, size: int, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` diamond-square height maps of ``size`` x ``size`` (a power of two), each in [0, 1]."""
    if size < 2 or size & (size - 1):
        raise ValueError(f"plasma fractal size must be a power of two >= 2, got {size}")
    maps = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        # The script's quirk is kept: the noise amplitude is wibble * U(-wibble, wibble).
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        square_sum = corners + np.roll(corners, -1, axis=1)
        square_sum = square_sum + np.roll(square_sum, -1, axis=2)
        maps[:, half:size:step, half:size:step] = wibbled_mean(square_sum)
        centres = maps[:, half:size:step, half:size:step]
        corners = maps[:, 0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0:size:step, half:size:step] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half:size:step, 0:size:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibble_decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


@CORRUPTIONS.register("fog")
def fog(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    _check_batch(x)
    strength, decay = _level(FOG, severity)
    h, w = x.shape[-2:]
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    maps = plasma_fractal(x.shape[0], size, decay, np.random.default_rng(seed))[:, :h, :w]
    haze = torch.from_numpy(maps).to(device=x.device, dtype=x.dtype)[:, None]
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * haze) * max_val / (max_val + strength)).clamp(0, 1)


def corrupt(name: str, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Apply the registered corruption ``name`` (raises ``UnknownNameError`` listing the names)."""
    return CORRUPTIONS.get(name)(x, severity, generator)
