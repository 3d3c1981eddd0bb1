"""``wrn``: WideResNet-depth-width (Zagoruyko & Komodakis 2016) in the form used by TRADES, MSD
and RobustBench: a 3x3 stem with 16 channels, three groups of ``(depth - 4) / 6`` pre-activation
basic blocks with 16, 32 and 64 channels times ``width`` (strides 1, 2, 2), a final BatchNorm +
activation, global average pooling and a linear layer. WRN-28-10 has 36.5M parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from workers.models.activations import make_activation
from workers.models.registry import MODELS


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activation: nn.Module) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.act = activation
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.act(self.bn2(self.conv1(out))))
        return out + shortcut


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
                blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, act))
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
