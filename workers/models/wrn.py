"""``wrn``: WideResNet-depth-width (Zagoruyko & Komodakis 2016) in the form used by TRADES, MSD
and RobustBench: a 3x3 stem with 16 channels, three groups of ``(depth - 4) / 6`` pre-activation
basic blocks with 16, 32 and 64 channels times ``width`` (strides 1, 2, 2), a final BatchNorm +
activation, global average pooling and a linear layer. WRN-28-10 has 36.5M parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from workers.models.activations import make_activation
from workers.models.preact_resnet import PreActBlock  # a wide block is the same pre-activation block
from workers.models.registry import MODELS


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int], depth: int = 28,
                 width: int = 10, activation: str = "relu", softplus_beta: float = 1.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"wrn depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), "
                             f"got {depth}")
        if width < 1:
            raise ValueError(f"wrn width must be >= 1, got {width}")
        n = (depth - 4) // 6
        act = make_activation(activation, softplus_beta)
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        groups, in_planes = [], channels[0]
        for planes, stride in zip(channels[1:], (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride if i == 0 else 1, act))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(in_planes)
        self.act = act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            # The reference implementations' init: He-normal (fan-out) convs, zero linear bias.
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.groups(self.conv1(x))
        out = self.pool(self.act(self.bn(out)))
        return self.fc(out.flatten(1))


MODELS.add("wrn", WideResNet)
