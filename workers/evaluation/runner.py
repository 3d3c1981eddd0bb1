"""Running a suite's stages over points: the batched loop shared by ``evaluate`` and the checks.

Each stage attacks only the points still classified correctly (clean and under the earlier
stages), in batches; every batch runs in an isolated RNG seeded from the evaluation's seed, the
norm, the stage and the batch's first index, so results are reproducible and the caller's random
stream is left as it was. Every returned point is checked against the threat model, and whether
it still fools the model is decided by a float32 forward of the exact model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from workers.evaluation.rng import derive_seed, isolated_rng
from workers.evaluation.suites import AttackSettings, Models, Stage, threat_model_violation

Progress = Callable[[int, int], None]
"""progress(done, total), in units of point-evaluations; ``done`` reaches ``total`` at the end."""


class Ticker:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, k: int) -> None:
        self.done = min(self.done + k, self.total)
        if self.progress is not None and k:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        self(self.total - self.done)


def predict(models: Models, x: Tensor, y: Tensor, device: torch.device, batch_size: int,
            tick: Ticker | None = None) -> np.ndarray:
    """Clean correctness of the exact model, per sample."""
    correct = torch.empty(len(x), dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            correct[start:start + batch_size] = (models.exact(xb).argmax(dim=1) == yb).cpu()
            if tick is not None:
                tick(len(xb))
    return correct.numpy()


def run_stage(models: Models, stage: Stage, settings: AttackSettings, x: Tensor, y: Tensor,
              alive: np.ndarray, device: torch.device, tick: Ticker | None = None) -> np.ndarray:
    """Attack the points still ``alive``; returns the new flags (alive AND survived the stage)."""
    alive = alive.copy()
    todo = np.flatnonzero(alive)
    for start in range(0, len(todo), settings.batch_size):
        index = torch.from_numpy(todo[start:start + settings.batch_size])
        xb, yb = x[index].to(device), y[index].to(device)
        with isolated_rng(derive_seed(settings.seed, settings.norm, settings.eps, stage.name, int(index[0]))):
            x_adv = stage.run(models, xb, yb)
        problem = threat_model_violation(xb, x_adv, settings.norm, settings.eps)
        if problem is not None:
            raise RuntimeError(f"attack {stage.name!r} ({settings.norm}, eps {settings.eps:g}) "
                               f"returned invalid points: {problem}")
        with torch.no_grad():
            survived = (models.exact(x_adv).argmax(dim=1) == yb).cpu().numpy()
        alive[index.numpy()] = survived
        if tick is not None:
            tick(len(index))
    if tick is not None:
        tick(len(alive) - len(todo))  # skipped points count as done
    return alive


def run_stages(models: Models, stages: Sequence[Stage], settings: AttackSettings, x: Tensor, y: Tensor,
               alive: np.ndarray, device: torch.device, tick: Ticker | None = None,
               ) -> tuple[np.ndarray, dict[str, float]]:
    """Every stage in order; returns the final flags and the accuracy after each stage."""
    after: dict[str, float] = {}
    for stage in stages:
        alive = run_stage(models, stage, settings, x, y, alive, device, tick)
        after[stage.name] = float(alive.mean())
    return alive, after
