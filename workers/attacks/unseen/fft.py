"""Correlation with large kernels through the FFT.

The unseen attacks convolve with 13x13 to 25x25 kernels (snow's flakes, Gabor's per-sample
kernels, elastic's Gaussian) on every iteration; on CPU PyTorch's grouped and single-output
convolutions take a slow path for such kernels, and the FFT is several times cheaper.
"""

from __future__ import annotations

import torch
from torch import Tensor


def correlate(x: Tensor, kernel: Tensor) -> Tensor:
    """``F.conv2d(x, kernel)`` without padding, for x (N, C, H, W) and kernel (K, C, kh, kw) with
    K = 1 (one output channel, summed over C) or K = N (each sample its own one-channel kernel,
    C = 1): output (N, 1, H - kh + 1, W - kw + 1)."""
    h, w = x.shape[-2:]
    kh, kw = kernel.shape[-2:]
    size = (h + kh - 1, w + kw - 1)
    spectrum = torch.fft.rfft2(x, s=size) * torch.fft.rfft2(kernel.flip(-2, -1), s=size)
    full = torch.fft.irfft2(spectrum.sum(dim=1, keepdim=True), s=size)
    return full[..., kh - 1:h, kw - 1:w]
