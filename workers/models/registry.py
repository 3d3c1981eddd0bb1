"""The models registry (name -> constructor); names equal ``workers.contract.catalog.MODELS``.

A constructor is called as ``ctor(num_classes=..., in_channels=..., input_size=(H, W), **args)``
and returns an ``nn.Module`` that maps [0, 1] images (N, C, H, W) to logits (N, num_classes).
"""

from collections.abc import Callable

from torch import nn

from workers.contract.registry import Registry

ModelConstructor = Callable[..., nn.Module]
MODELS: Registry[ModelConstructor] = Registry("model")
