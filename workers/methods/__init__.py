"""Training methods. ``build_method`` turns a resolved spec into a ready Method.

Importing this package registers every method module listed in ``_MODULES``.
"""

from __future__ import annotations

import importlib

from workers.methods.base import Method, MethodContext, StepOutput
from workers.methods.registry import METHODS

_MODULES = ("nt",)
for _module in _MODULES:
    importlib.import_module(f"workers.methods.{_module}")


def build_method(method: str, ctx: MethodContext) -> Method:
    """The method named ``method``; gradient projection wraps it when ``gp.enabled`` is set."""
    return METHODS.get(method)(ctx)


__all__ = ["METHODS", "Method", "MethodContext", "StepOutput", "build_method"]
