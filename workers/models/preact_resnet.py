"""``preact-resnet18``: the pre-activation ResNet-18 of the adversarial-training literature (He et
al. 2016, identity mappings; the CIFAR variant used by fast AT, E-AT and RAMP).

3x3 stem without pooling, four stages of two pre-activation basic blocks (64, 128, 256, 512
channels times ``width / 64``, strides 1, 2, 2, 2), a final BatchNorm + activation, global
average pooling and a linear layer -- 11.17M parameters for 10 classes. ``activation="softplus"``
with ``softplus_beta=1`` is the RAMP reference model (its ``activation='softplus1'``). Global
average pooling (instead of a fixed 4x4 pool) makes 28x28 inputs work too; at 32x32 it is the same.
"""

from __future__ import annotations

from torch import Tensor, nn

from workers.models.activations import make_activation
from workers.models.registry import MODELS


class PreActBlock(nn.Module):
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
        # The projection shortcut sees the pre-activated input, the identity one the raw input.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int, width: int = 64,
                 activation: str = "relu", softplus_beta: float = 1.0) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        act = make_activation(activation, softplus_beta)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], width
        for i, blocks in enumerate(num_blocks):
            planes = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
            stage = []
            for stride in strides:
                stage.append(PreActBlock(in_planes, planes, stride, act))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.act = act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(x))
        out = self.pool(self.act(self.bn(out)))
        return self.linear(out.flatten(1))


def preact_resnet18(num_classes: int, in_channels: int, input_size: tuple[int, int], width: int = 64,
                    activation: str = "relu", softplus_beta: float = 1.0) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width, activation, softplus_beta)


MODELS.add("preact-resnet18", preact_resnet18)
