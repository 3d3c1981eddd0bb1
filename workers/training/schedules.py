"""Learning-rate schedules: pure functions of the fraction of training done.

Each schedule maps ``(base_lr, progress)`` to an LR, where ``progress`` in [0, 1] is the position in
the run. The loop updates the LR every optimiser step; step ``t`` of ``T`` uses the schedule at the
middle of that step, ``(t + 1/2) / T`` (``step_progress``). The midpoint keeps step decays exactly on
epoch boundaries (every step of an epoch gets the same LR when a milestone is an epoch boundary) and
keeps the cyclic schedule from spending its first step at LR 0. ``T`` is the capped number of
optimiser steps, so a run shortened with ``max_steps`` still goes through the whole schedule.

Registered names (``workers.contract.catalog.SCHEDULES``):
- ``constant``: ``base_lr`` throughout.
- ``piecewise``: the RAMP/CIFAR-10 reference, LR / 10 after 70 of 80 epochs (progress 0.875).
- ``multistep``: the fine-tuning reference, LR / 10 at 1/3 and 2/3 (0.05 -> 0.005 -> 0.0005).
- ``cyclic``: linear 0 -> ``base_lr`` at 2/5 -> 0 (the WRN-28-10 setting).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from workers.contract.registry import Registry

Schedule = Callable[[float, float], float]

SCHEDULES: Registry[Schedule] = Registry("schedule")

PIECEWISE_MILESTONES: tuple[float, ...] = (70 / 80,)
MULTISTEP_MILESTONES: tuple[float, ...] = (1 / 3, 2 / 3)
CYCLIC_PEAK = 2 / 5


def step_decay(
    base_lr: float, progress: float, *, milestones: Sequence[float], factor: float = 0.1
) -> float:
    """``base_lr * factor ** (number of milestones already reached)``."""
    passed = sum(1 for m in milestones if progress >= m)
    return base_lr * factor**passed


def triangle(base_lr: float, progress: float, *, peak: float = CYCLIC_PEAK) -> float:
    """Linear warm-up 0 -> ``base_lr`` at ``peak``, then linear decay to 0 at progress 1."""
    p = min(max(progress, 0.0), 1.0)
    if p <= peak:
        return base_lr * p / peak
    return base_lr * (1.0 - p) / (1.0 - peak)


def constant(base_lr: float, progress: float) -> float:
    del progress
    return base_lr


SCHEDULES.add("constant", constant)
SCHEDULES.add("piecewise", partial(step_decay, milestones=PIECEWISE_MILESTONES))
SCHEDULES.add("multistep", partial(step_decay, milestones=MULTISTEP_MILESTONES))
SCHEDULES.add("cyclic", triangle)


def radius_scale(warmup: float, step: int, total_steps: int) -> float:
    """The training radii's share of their full values at step ``step``: a linear ramp from 0 over
    the first ``warmup`` of the run (a curriculum: at eps_inf = 0.3 on MNIST, adversarial training
    from scratch otherwise stays at chance for hundreds of steps), then 1. ``warmup`` 0: always 1."""
    if warmup <= 0:
        return 1.0
    return min(1.0, step_progress(step, total_steps) / warmup)


def step_progress(step: int, total_steps: int) -> float:
    """Position of optimiser step ``step`` (0-based) in a run of ``total_steps`` steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside a run of {total_steps} steps")
    return (step + 0.5) / total_steps


def lr_at(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """The LR of optimiser step ``step`` (0-based) under the named schedule."""
    return SCHEDULES.get(schedule)(base_lr, step_progress(step, total_steps))
