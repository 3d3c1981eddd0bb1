"""The resumable part of a run (everything except the weights) and its (un)packing.

The packed dict holds tensors and plain Python values only, so ``torch.load(weights_only=True)``
reads it back (see ``workers.checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from workers.methods.base import Method
from workers.training.rng import capture_rng_state, restore_rng_state

STATE_VERSION = 1


@dataclass
class Progress:
    """Where a run is: completed epochs, optimiser steps taken (= LR schedule position), history."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def pack_train_state(
    progress: Progress,
    *,
    optimizer: Optimizer,
    method: Method,
    loader_generator: torch.Generator | None,
    spec: dict[str, Any],
) -> dict[str, Any]:
    rng = capture_rng_state()
    if loader_generator is not None:
        rng["loader"] = loader_generator.get_state()
    return {
        "version": STATE_VERSION,
        "epoch": progress.epoch,
        "step": progress.step,
        "history": list(progress.history),
        "spec": spec,
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),
        "rng": rng,
    }


def restore_train_state(
    state: dict[str, Any],
    *,
    optimizer: Optimizer,
    method: Method,
    loader_generator: torch.Generator | None,
) -> Progress:
    """Load optimiser, method and RNG states; call last, after everything random was built."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"training state version {state.get('version')!r}, expected {STATE_VERSION}")
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    restore_rng_state(state["rng"])
    if loader_generator is not None and "loader" in state["rng"]:
        loader_generator.set_state(state["rng"]["loader"])
    return Progress(epoch=int(state["epoch"]), step=int(state["step"]), history=list(state["history"]))
