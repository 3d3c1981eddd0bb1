"""The threat models' names. Torch-free."""

from typing import Literal

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[Norm, ...] = ("linf", "l2", "l1")
