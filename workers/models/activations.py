"""Activation functions a model may be built with, by name (JSON-friendly model args).

``softplus`` is what the RAMP / E-AT reference PreAct ResNet-18 uses (their ``softplus1``:
``Softplus(beta=1)``); a smooth activation gives the attacks better-behaved gradients.
"""

from collections.abc import Callable

from torch import nn

from workers.contract.registry import Registry, UnknownNameError

ACTIVATIONS: Registry[Callable[[float], nn.Module]] = Registry("activation")
ACTIVATIONS.add("relu", lambda softplus_beta: nn.ReLU())
ACTIVATIONS.add("softplus", lambda softplus_beta: nn.Softplus(beta=softplus_beta))


def make_activation(name: str, softplus_beta: float = 1.0) -> nn.Module:
    if softplus_beta <= 0:
        raise ValueError(f"softplus_beta must be positive, got {softplus_beta}")
    try:
        factory = ACTIVATIONS.get(name)
    except UnknownNameError as exc:
        # A bad model arg is a ValueError like every other one build_model reports.
        raise ValueError(str(exc)) from None
    return factory(softplus_beta)
