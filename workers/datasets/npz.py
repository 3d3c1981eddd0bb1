"""A user's own evaluation points from an ``.npz`` file, validated with messages that say what to fix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from workers.datasets.base import DatasetNotFoundError

FORMAT = "arrays x (N, C, H, W) floats in [0, 1] and y (N,) integer labels"


def validate_points(x: np.ndarray, y: np.ndarray, source: str = "points") -> None:
    """Raise ``ValueError`` unless ``x``, ``y`` follow ``FORMAT``."""
    if x.ndim != 4:
        raise ValueError(f"{source}: x must have rank 4 (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        hint = " (divide 0-255 pixels by 255)" if np.issubdtype(x.dtype, np.integer) else ""
        raise ValueError(f"{source}: x must be floating point in [0, 1], got dtype {x.dtype}{hint}")
    if y.ndim != 1:
        raise ValueError(f"{source}: y must have rank 1 (N,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: y must hold integer class labels, got dtype {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"{source}: x has {len(x)} points but y has {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"{source}: no points (N = 0)")
    if not np.isfinite(x).all():
        raise ValueError(f"{source}: x contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{source}: x values must lie in [0, 1], found {lo:g}..{hi:g}")
    if y.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0, found {y.min()}")


def load_npz(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """``(x float32 (N, C, H, W), y int64 (N,))`` from an ``.npz`` holding ``FORMAT``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no file {path}; expected an .npz with {FORMAT}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:  # not a zip / not numpy
        raise ValueError(f"{path}: not a readable .npz file ({exc}); expected {FORMAT}") from exc
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; found "
                             f"{', '.join(archive.files) or 'none'}; expected {FORMAT}")
        x, y = archive["x"], archive["y"]
    validate_points(x, y, source=str(path))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
