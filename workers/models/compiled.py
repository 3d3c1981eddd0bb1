"""A model's fast forms for training: channels-last layout and ``torch.compile`` with an eager
fallback (``TrainSpec.channels_last`` / ``TrainSpec.compile``).

``CompiledOrEager`` holds the eager module as its only submodule (``.module``, the attribute name
the runtimes and ``unwrap`` helpers already look through) and keeps the compiled callable outside
the module tree, so its ``state_dict`` keys are the eager model's plus a ``module.`` prefix and
the training loop saves the eager module itself: nothing of the compiled form reaches a
checkpoint. Compilation is lazy in torch (a graph is traced and compiled at its first call, again
for each new mode or shape), so a failure shows up in a forward, not in ``torch.compile``: a
dynamo/inductor error (``TorchDynamoException``; a missing C++ compiler, an unsupported op) makes
the wrapper warn once and run eagerly from then on. Errors that are not the compiler's (a wrong
input shape) propagate as they would eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def _dynamo_error() -> type[BaseException]:
    from torch._dynamo.exc import TorchDynamoException

    return TorchDynamoException


class CompiledOrEager(nn.Module):
    """``module`` through ``torch.compile`` until compiling fails, then eagerly."""

    def __init__(self, module: nn.Module, **compile_kwargs: Any) -> None:
        super().__init__()
        self.module = module
        self.error: str | None = None
        compiled: Callable[..., Tensor] | None
        try:
            compiled = torch.compile(module, **compile_kwargs)
        except Exception as exc:  # noqa: BLE001 -- any failure to set up compilation means eager
            compiled = None
            self._fall_back(exc)
        # Outside the module tree: registering it would add its parameters twice to state_dict.
        self.__dict__["_compiled"] = compiled

    @property
    def compiled(self) -> bool:
        """Whether forwards still go through the compiled callable."""
        return self.__dict__["_compiled"] is not None

    def _fall_back(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.__dict__["_compiled"] = None
        warnings.warn(f"torch.compile failed, running the model eagerly ({self.error})",
                      RuntimeWarning, stacklevel=3)

    def forward(self, x: Tensor) -> Tensor:
        compiled = self.__dict__["_compiled"]
        if compiled is not None:
            try:
                return compiled(x)
            except _dynamo_error() as exc:
                self._fall_back(exc)
        return self.module(x)


def eager(model: nn.Module) -> nn.Module:
    """The eager module under a ``CompiledOrEager`` (``model`` itself otherwise)."""
    return model.module if isinstance(model, CompiledOrEager) else model


def fast_model(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """``model`` converted in place to channels-last when asked (4-d weights only; the rest is
    unaffected), wrapped in ``CompiledOrEager`` when asked; else ``model`` itself."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return CompiledOrEager(model) if compile else model
