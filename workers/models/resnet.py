"""``resnet18``: torchvision's ResNet-18 (randomly initialised -- nothing is downloaded) with a stem
chosen for the input size.

``stem="imagenet"``: the original 7x7 stride-2 convolution + 3x3 max-pool (224px inputs).
``stem="cifar"``: a 3x3 stride-1 convolution and no max-pool, the usual CIFAR adaptation, so a
32x32 input still reaches the last stage as 4x4 maps. ``stem="auto"`` (default) picks "cifar" for
inputs up to ``CIFAR_STEM_MAX`` pixels a side and "imagenet" above. Module names are
torchvision's, so torchvision-format ResNet-18 state dicts load into the imagenet-stem model.
"""

from __future__ import annotations

from torch import nn

from workers.models.registry import MODELS

CIFAR_STEM_MAX = 64
STEMS = ("auto", "cifar", "imagenet")


def resnet18(num_classes: int, in_channels: int, input_size: tuple[int, int],
             stem: str = "auto") -> nn.Module:
    if stem not in STEMS:
        raise ValueError(f"resnet18 stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if stem == "auto":
        stem = "cifar" if max(input_size) <= CIFAR_STEM_MAX else "imagenet"
    # Imported here: registering the model must not import torchvision (and torch._dynamo, ~1 s).
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    # A replaced stem gets torchvision's own conv init, so both stems start alike.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


MODELS.add("resnet18", resnet18)
