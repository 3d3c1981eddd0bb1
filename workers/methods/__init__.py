"""Training methods. ``build_method`` turns a resolved spec into a ready Method.

Importing this package registers every method module listed in ``_MODULES``.
"""

from __future__ import annotations

import importlib

from workers.methods.base import Method, MethodContext, StepOutput
from workers.methods.gp import GradientProjected
from workers.methods.registry import METHODS

_MODULES = (
    "nt", "at", "sat", "avg", "max", "msd", "eat", "ramp", "trades",
    "alp", "mart", "vat", "one_step", "free", "distill",
)
for _module in _MODULES:
    importlib.import_module(f"workers.methods.{_module}")


def build_method(method: str, ctx: MethodContext) -> Method:
    """The method named ``method``; gradient projection wraps it when ``gp.enabled`` is set."""
    built = METHODS.get(method)(ctx)
    if ctx.params.get("gp.enabled"):
        return GradientProjected(built)
    return built


__all__ = ["METHODS", "GradientProjected", "Method", "MethodContext", "StepOutput", "build_method"]
