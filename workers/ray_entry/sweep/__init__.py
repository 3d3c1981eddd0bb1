"""Sweeps: a Ray Tune ``Tuner`` of training trials; the best trial evaluated with the default suite.

``tuner`` (``run_sweep``, ``SweepResult``: the driver's side), ``trainable`` (``TrainTrial``: one
trial as Tune sees it), ``runs`` (a trial's training run, in its own actor or on Ray Train),
``evaluation`` (a trial's checkpoint evaluated, as a Ray task), ``recorder`` (trial records and the
sweep's cancel, in the driver's Tune loop), ``resources`` (how a trial trains and what it reserves).
"""

from workers.ray_entry.sweep.tuner import SweepResult, run_sweep

__all__ = ["SweepResult", "run_sweep"]
