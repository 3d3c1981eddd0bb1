"""Seeding and RNG state capture, so a resumed run continues the exact random streams.

States are stored as tensors and plain Python values only, because training state is loaded
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

# Distinct odd multipliers keep (seed, epoch) -> seed injective for any realistic epoch count.
_EPOCH_MULTIPLIER = 1_000_003


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order: a function of (seed, epoch) only."""
    return (seed * _EPOCH_MULTIPLIER + epoch) % 2**63


def capture_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block (e.g. monitoring) without advancing the caller's random streams."""
    saved = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(saved)
