"""Whether an attack's output is an image batch at all: the check every suite runs on every batch
an attack returns, before the threat model's own bound (``suites.threat_model_violation``)."""

from __future__ import annotations

import torch
from torch import Tensor

PIXEL_SLACK = 1e-6  # float rounding in the attacks' clamps


def output_problem(x: Tensor, x_adv: Tensor) -> str | None:
    """Why ``x_adv`` is not a valid image batch for ``x`` (None when it is)."""
    if x_adv.shape != x.shape:
        return f"shape {tuple(x_adv.shape)} != input shape {tuple(x.shape)}"
    if not torch.isfinite(x_adv).all():
        return "non-finite values"
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -PIXEL_SLACK or hi > 1 + PIXEL_SLACK:
        return f"values outside [0, 1] ({lo:g}..{hi:g})"
    return None
