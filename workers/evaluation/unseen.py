"""The ``unseen`` suite's adversaries over the evaluated points (``workers.attacks.unseen``).

Each attack runs with the budget of the images' family (``workers.contract.unseen``) on the
points the model classifies correctly (the others are wrong under any attack), in batches, each
batch with its own generator seeded from the evaluation's seed, the attack and the batch's first
index -- reproducible for a given seed and batch size. Every returned batch is checked (shape,
finite, inside [0, 1]) and decided by a float32 forward of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from workers.attacks.unseen import unseen_attack
from workers.contract.stats import wilson_interval
from workers.contract.unseen import UNSEEN_ATTACKS, UNSEEN_STEPS, budgets_for, family_of
from workers.evaluation.rng import generator
from workers.evaluation.validity import output_problem


def _fraction(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else float("nan")


def _interval(flags: np.ndarray) -> list[float]:
    return list(wilson_interval(int(flags.sum()), int(flags.size)))


@dataclass
class UnseenOutcome:
    """Per-sample correctness under each unseen adversary (clean correctness included)."""

    flags: dict[str, np.ndarray]
    eps: dict[str, float]
    family: str
    steps: int

    @property
    def union(self) -> np.ndarray:
        out = np.ones_like(next(iter(self.flags.values())))
        for name in self.flags:
            out &= self.flags[name]
        return out

    def metrics(self) -> dict[str, Any]:
        names = [name for name in UNSEEN_ATTACKS if name in self.flags]
        accuracy = {name: _fraction(self.flags[name]) for name in names}
        return {
            "accuracy": accuracy,
            "mean": float(np.mean(list(accuracy.values()))),
            "union": _fraction(self.union),
            "intervals": {**{name: _interval(self.flags[name]) for name in names},
                          "union": _interval(self.union)},
            "eps": {name: self.eps[name] for name in names},
            "family": self.family,
            "steps": self.steps,
        }


def unseen_flags(model: nn.Module, x: Tensor, y: Tensor, clean: np.ndarray, device: torch.device,
                 batch_size: int, seed: int, steps: int | None, tick: Any = None) -> UnseenOutcome:
    """Correctness of ``model`` under every unseen adversary; ``clean`` the clean flags."""
    eps = budgets_for(x.shape[-2], x.shape[-1])
    n_steps = UNSEEN_STEPS if steps is None else steps
    todo = np.flatnonzero(clean)
    flags: dict[str, np.ndarray] = {}
    for name in UNSEEN_ATTACKS:
        alive = clean.copy()
        for start in range(0, len(todo), batch_size):
            index = torch.from_numpy(todo[start:start + batch_size])
            xb, yb = x[index].to(device), y[index].to(device)
            gen = generator(seed, "unseen", name, int(index[0]))
            x_adv = unseen_attack(name, model, xb, yb, eps[name], steps=n_steps, generator=gen).x_adv
            problem = output_problem(xb, x_adv)
            if problem is not None:
                raise RuntimeError(f"unseen attack {name!r} returned invalid images: {problem}")
            with torch.no_grad():
                alive[index.numpy()] = (model(x_adv).argmax(dim=1) == yb).cpu().numpy()
            if tick is not None:
                tick(len(index))
        if tick is not None:
            tick(len(x) - len(todo))
        flags[name] = alive
    return UnseenOutcome(flags, eps, family_of(x.shape[-2], x.shape[-1]), n_steps)
