"""Input normalisation inside the model, so every threat model is defined on [0, 1] pixels.

``mean`` / ``std`` are registered buffers: they move with ``.to(device)`` and are saved in the
state dict, and attacks differentiate through them like through any layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def check_stats(mean: Sequence[float], std: Sequence[float], in_channels: int) -> None:
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, in_channels):
            raise ValueError(f"{name} must have one value per input channel ({in_channels}) or a "
                             f"single value, got {len(values)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {list(std)}")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Normalized(nn.Module):
    """A classifier that normalises its [0, 1] input first: ``net(normalize(x))``."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))
