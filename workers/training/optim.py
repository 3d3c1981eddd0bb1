"""The optimiser: SGD with momentum (the default) or Adam, weight decay on weights only.

Following the reference code, normalisation-layer parameters (BatchNorm/GroupNorm/LayerNorm
affine scale and shift) and every bias are excluded from weight decay: decaying them shrinks the
features' scale without regularising the function the way decaying weights does.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.optim import SGD, Adam, Optimizer

from workers.contract.registry import Registry

NORM_LAYERS: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ``decay`` (weights) and ``no_decay`` (biases and normalisation parameters)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if is_norm or name == "bias" else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                    name: str = "sgd") -> Optimizer:
    """``name`` "sgd" (with ``momentum``) or "adam" (default betas; ``momentum`` unused: MSD's MNIST
    recipe)."""
    return OPTIMIZERS.get(name)(param_groups(model, weight_decay), lr=lr, momentum=momentum)


OPTIMIZERS: Registry[Callable[..., Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda groups, *, lr, momentum: SGD(groups, lr=lr, momentum=momentum))
OPTIMIZERS.add("adam", lambda groups, *, lr, momentum: Adam(groups, lr=lr))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
