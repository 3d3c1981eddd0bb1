"""``small-cnn``: two conv blocks and two fully connected layers, for MNIST-sized inputs.

Each block is a 3x3 convolution, the activation and a 2x2 max-pool (pool-first when the model is
channels-last: the same function for these non-decreasing activations, and cheaper there), so a
28x28 (or 32x32) input reaches the classifier as 7x7 (8x8) maps. Defaults (channels 32, 64; 256
hidden units; 0.82M parameters at 28x28) keep a forward + backward pass of a 128-image batch
near 25 ms on one CPU core, which is what makes multi-norm adversarial training on mnist-5k
feasible without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from workers.models.activations import make_activation
from workers.models.registry import MODELS


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int],
                 channels: Sequence[int] = (32, 64), hidden: int = 256, activation: str = "relu") -> None:
        super().__init__()
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise ValueError(f"small-cnn needs two positive channel counts and hidden >= 1, got "
                             f"channels={list(channels)}, hidden={hidden}")
        height, width = input_size
        if height < 4 or width < 4:
            raise ValueError(f"small-cnn needs inputs of at least 4x4 (two 2x2 pools), got {height}x{width}")
        c1, c2 = channels
        # Stored pool-first; the forward picks the order by layout. For the non-decreasing
        # activations offered, act(maxpool(z)) == maxpool(act(z)) exactly (logits and input
        # gradients bit for bit, tests/test_models.py), so the order is only a matter of speed:
        # channels-last pools fast and pool-first runs the activation on a quarter of the elements
        # (1.4-1.6x per attack step on CPU); on contiguous maps pooling the ReLU's zeros is cheaper
        # than pooling raw convolution outputs, so act-first is kept there (docs/performance.md).
        # The convolutions keep their module indices (0, 3): checkpoints load either way.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.MaxPool2d(2), make_activation(activation),
            nn.Conv2d(c1, c2, 3, padding=1), nn.MaxPool2d(2), make_activation(activation),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * (height // 4) * (width // 4), hidden), make_activation(activation),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.pools_first():
            return self.classifier(self.features(x))
        conv1, pool1, act1, conv2, pool2, act2 = self.features
        return self.classifier(pool2(act2(conv2(pool1(act1(conv1(x)))))))

    def pools_first(self) -> bool:
        """Whether the forward pools before the activation: when the model is channels-last."""
        weight = self.features[3].weight  # the first conv may have one input channel: both layouts
        return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


MODELS.add("small-cnn", SmallCNN)
