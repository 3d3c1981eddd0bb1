"""Models: a registry of constructors whose names equal ``workers.contract.catalog.MODELS``.

``build_model`` is the one way to build a model, so every model takes [0, 1] inputs, keeps any
input normalisation inside itself (``mean`` / ``std`` model args, buffers), and is described
completely by ``(name, num_classes, in_channels, input_size, model_args)`` -- the JSON that
checkpoint metadata stores to rebuild it.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from workers.models.normalize import Normalize, Normalized, check_stats
from workers.models.registry import MODELS

_MODULES = ("small_cnn", "preact_resnet", "resnet", "wrn")
for _module in _MODULES:
    importlib.import_module(f"workers.models.{_module}")

# Filled by build_model itself, never accepted as model args.
_BUILD_ARGS = frozenset({"num_classes", "in_channels", "input_size"})


def model_arg_names(name: str) -> list[str]:
    """The model args (besides ``mean`` and ``std``) the constructor of ``name`` accepts."""
    params = inspect.signature(MODELS.get(name)).parameters
    return sorted(p for p in params if p not in _BUILD_ARGS)


def _input_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be a positive int or (height, width), got {input_size!r}")
    return int(size[0]), int(size[1])


def build_model(name: str, *, num_classes: int, in_channels: int, input_size: int | Sequence[int],
                **model_args: Any) -> nn.Module:
    """Model ``name`` for ``in_channels`` x ``input_size`` images and ``num_classes`` classes.

    ``model_args`` must be JSON-serialisable. ``mean`` and ``std`` (lists, one value per channel
    or one for all) wrap the model in :class:`Normalized`; without them the model sees raw
    [0, 1] pixels.
    """
    constructor = MODELS.get(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
    try:
        json.dumps(model_args, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"model args of {name!r} must be JSON-serialisable (checkpoints store them): "
                        f"{exc}") from exc
    args = dict(model_args)
    mean, std = args.pop("mean", None), args.pop("std", None)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std for input normalisation, or neither")
    accepted = model_arg_names(name)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} does not take {', '.join(unknown)}; its args are "
                        f"{', '.join([*accepted, 'mean', 'std'])}")
    model = constructor(num_classes=num_classes, in_channels=in_channels, input_size=_input_size(input_size),
                        **args)
    if mean is None:
        return model
    check_stats(mean, std, in_channels)
    return Normalized(model, mean, std)


def build_from_metadata(meta: Mapping[str, Any]) -> nn.Module:
    """The model a checkpoint's or a run's metadata describes (``model``, ``model_args``,
    ``num_classes``, ``in_channels``, ``input_size``), with fresh weights."""
    return build_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                       input_size=meta["input_size"], **meta["model_args"])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MODELS", "Normalize", "Normalized", "build_from_metadata", "build_model", "count_parameters",
    "model_arg_names",
]
