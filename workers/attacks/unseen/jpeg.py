"""Adversarial JPEG (Kang et al. 2019): the perturbation lives in the quantised 8x8 DCT
coefficients of the YCbCr image -- luma at full resolution, both chroma planes at half
resolution (4:2:0) -- with JPEG's quality-50 quantisation tables, and is decoded back to pixels.

As in the reference, a variable ``v`` bounded by ``eps`` (l_inf, or l_1 with every coordinate in
[-2, 2]) moves each quantised coefficient by ``v / 2``; the encoder does not round (the reference
does not either), so decoding is linear and the image changes by exactly the decoded
perturbation. We add that decoded perturbation to the original image instead of re-encoding the
clean image, so ``eps = 0`` is the identity (the reference's round trip also subsamples the
clean chroma, a change that is not the attack's). A side that is not a multiple of 16 is padded
(the perturbation lives on the padded grid) and cropped back, centred. A one-channel image has
the luma plane only.

l_inf: signed-gradient ascent, step ``eps / sqrt(steps)`` (the reference's calibration step),
uniform random start. l_1: Frank-Wolfe with step ``1 / (t + 1)`` from a random start of l_1 size
below ``eps`` -- the reference's optimiser for this variant (a sign step is not an l_1 ascent
direction).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.attacks.common import per_sample
from workers.attacks.unseen.ascent import UnseenResult, ascend, check_images, signed_step, uniform

L1_COORDINATE_CAP = 2.0

# JPEG's quality-50 tables (ITU T.81, Annex K), indexed [row (vertical frequency), column].
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TOP = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))
# YCbCr -> RGB of JFIF; on differences the offsets cancel.
_YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def quantisation_tables(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    luma = torch.tensor(_LUMA_TABLE, dtype=dtype, device=device)
    chroma = torch.full((8, 8), 99.0, dtype=dtype, device=device)
    chroma[:4, :4] = torch.tensor(_CHROMA_TOP, dtype=dtype, device=device)
    return luma, chroma


def dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """JPEG's 8-point DCT-II as an orthonormal matrix D: coefficients = D @ block @ D.T."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) / 2
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _blocks_to_plane(blocks: Tensor, height: int, width: int) -> Tensor:
    """(N, H/8 * W/8, 8, 8) blocks in raster order -> (N, H, W)."""
    n = blocks.shape[0]
    grid = blocks.view(n, height // 8, width // 8, 8, 8)
    return grid.permute(0, 1, 3, 2, 4).reshape(n, height, width)


def _padded(height: int, width: int) -> tuple[int, int]:
    return -(-height // 16) * 16, -(-width // 16) * 16


def layout(channels: int, height: int, width: int) -> tuple[int, int]:
    """(luma blocks, blocks per chroma plane) of an image of this size, after padding."""
    ph, pw = _padded(height, width)
    return (ph // 8) * (pw // 8), (ph // 16) * (pw // 16) if channels == 3 else 0


def decode(v: Tensor, channels: int, height: int, width: int) -> Tensor:
    """The pixel perturbation (N, C, H, W), on the [0, 1] scale, of the coefficient variable
    ``v`` (N, 64 * (luma blocks + 2 * chroma blocks))."""
    ph, pw = _padded(height, width)
    n_luma, n_chroma = layout(channels, height, width)
    luma_q, chroma_q = quantisation_tables(v.device, v.dtype)
    d = dct_matrix(v.device, v.dtype)
    n = v.shape[0]

    def plane(part: Tensor, table: Tensor, h: int, w: int) -> Tensor:
        coefficients = part.view(n, -1, 8, 8) / 2 * table
        return _blocks_to_plane(d.T @ coefficients @ d, h, w)

    luma = plane(v[:, :64 * n_luma], luma_q, ph, pw)
    if channels == 1:
        delta = luma[:, None]
    else:
        start = 64 * n_luma
        cb = plane(v[:, start:start + 64 * n_chroma], chroma_q, ph // 2, pw // 2)
        cr = plane(v[:, start + 64 * n_chroma:], chroma_q, ph // 2, pw // 2)
        # 4:2:0 chroma back to full resolution by repetition, as a JPEG decoder without smoothing.
        cb, cr = (F.interpolate(c[:, None], scale_factor=2, mode="nearest")[:, 0] for c in (cb, cr))
        ycc = torch.stack((luma, cb, cr), dim=1)
        m = torch.tensor(_YCBCR_TO_RGB, dtype=v.dtype, device=v.device)
        delta = torch.einsum("rc,nchw->nrhw", m, ycc)
    top, left = (ph - height) // 2, (pw - width) // 2
    return delta[:, :, top:top + height, left:left + width] / 255


def render(x: Tensor, v: Tensor) -> Tensor:
    return (x + decode(v, x.shape[1], x.shape[2], x.shape[3])).clamp(0, 1)


def _l1_lmo(grad: Tensor, eps: Tensor, cap: float) -> Tensor:
    """argmax <grad, s> over {||s||_1 <= eps, |s_i| <= cap}: the largest |grad| coordinates pushed
    to the cap until the l_1 budget is spent (the last one partly)."""
    magnitude, order = grad.abs().sort(dim=1, descending=True)
    spent_before = torch.arange(grad.shape[1], device=grad.device, dtype=grad.dtype) * cap
    amount = (eps[:, None] - spent_before).clamp(min=0.0, max=cap)
    amount = torch.where(magnitude > 0, amount, torch.zeros_like(amount))
    s = torch.zeros_like(grad).scatter(1, order, amount)
    return s * grad.sign()


def _random_l1(shape: tuple[int, int], eps: Tensor, generator: torch.Generator | None,
               device: torch.device) -> Tensor:
    """A random point with l_1 size below ``eps`` (exponential magnitudes, random signs), every
    coordinate inside the cap."""
    e = -torch.log(uniform(shape, generator, device, 1e-12, 1.0))
    signs = torch.where(uniform(shape, generator, device) < 0.5, -1.0, 1.0)
    tail = -torch.log(uniform((shape[0],), generator, device, 1e-12, 1.0))
    point = e * signs / (tail + e.sum(dim=1))[:, None] * eps[:, None]
    return point.clamp(-L1_COORDINATE_CAP, L1_COORDINATE_CAP)


def jpeg_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *, norm: str = "linf",
                steps: int = 200, generator: torch.Generator | None = None) -> UnseenResult:
    """Adversarial JPEG of l_inf (``norm="linf"``) or l_1 (``"l1"``) size ``eps`` (a float or per
    sample). ``params[0]`` is ``v``."""
    check_images(x, y)
    if norm not in ("linf", "l1"):
        raise ValueError(f"the JPEG attack has l_inf and l_1 variants, got {norm!r}")
    x = x.detach()
    radius = per_sample(eps, x)
    n_luma, n_chroma = layout(*x.shape[1:])
    shape = (x.shape[0], 64 * (n_luma + 2 * n_chroma))
    if norm == "linf":
        v0 = uniform(shape, generator, x.device, -1.0, 1.0) * radius[:, None]
        step = radius / math.sqrt(max(steps, 1))

        def update(params: list[Tensor], grads: list[Tensor], it: int) -> list[Tensor]:
            (v,) = signed_step(params, grads, step)
            return [torch.maximum(torch.minimum(v, radius[:, None]), -radius[:, None])]
    else:
        v0 = _random_l1(shape, radius, generator, x.device)

        def update(params: list[Tensor], grads: list[Tensor], it: int) -> list[Tensor]:
            vertex = _l1_lmo(grads[0], radius, L1_COORDINATE_CAP)
            return [params[0] + (vertex - params[0]) / (it + 1.0)]

    return ascend(model, y, [v0], lambda p: render(x, p[0]), update, steps)
