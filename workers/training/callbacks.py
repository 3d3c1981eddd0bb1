"""How a training run reports: a ``Callback`` interface and the per-epoch ``EpochReport``.

The loop calls, in order: ``on_train_start(info)``; per optimiser step ``on_step(step, total)``;
per epoch ``before_checkpoint(path)`` and ``on_checkpoint(path)`` around the save (the rank that
writes only; a ``before_checkpoint`` that raises stops the run without writing) then ``on_epoch_end(report)``
(every rank, so a distributed reporter can call its collective report there; ``report.monitor``
is only filled on the writing rank); during the final evaluation ``on_eval_progress(done, total)``
(the writing rank); finally ``on_train_end(metrics)``. The CLI plugs a progress
bar, the job driver an HTTP reporter, Ray Train a ``ray.train.report`` bridge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from workers.contract.attempts import AttemptFence


@dataclass(frozen=True)
class TrainInfo:
    """What a run is about to do (given to ``on_train_start``)."""

    spec: dict[str, Any]  # the resolved TrainSpec
    out_dir: str
    device: str
    epochs: int  # epochs that will run in total (fewer than spec.epochs when max_steps cuts it)
    steps_per_epoch: int
    total_steps: int
    start_epoch: int  # epochs already done (non-zero when resuming)
    start_step: int
    is_main: bool = True


@dataclass(frozen=True)
class EpochReport:
    """One epoch's summary; one line of ``history.jsonl``.

    ``epoch`` counts completed epochs (1 after the first). ``losses`` are batch means of the
    method's loss parts (``ce``, ``pairing``, ...). ``train_robust_acc`` is, per attacked norm, the
    fraction of training adversarial examples still classified correctly. ``monitor`` holds the
    held-out check (``clean``, ``linf``, ``l2``, ``l1``, ``union``) or is empty when disabled: the
    ``monitor`` suite, an optimistic upper bound on robustness (curves, never results).
    ``grad_cosine`` / ``grad_angle_deg``: under gradient projection, the cosine (and angle, in
    degrees) between the epoch's natural and adversarial parameter updates
    (``workers.methods.gp.update_cosine``); None for runs without GP.
    """

    epoch: int
    epochs: int
    step: int
    total_steps: int
    lr: float
    losses: dict[str, float]
    train_robust_acc: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    monitor: dict[str, float] = field(default_factory=dict)
    # The suite behind ``monitor``, and that its numbers over-state robustness: they label every
    # place the curve is shown (history.jsonl, the job's metrics events, the CLI, the web page).
    monitor_suite: str = "monitor"
    monitor_upper_bound: bool = True
    grad_cosine: float | None = None
    grad_angle_deg: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochReport:
        return cls(**data)


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_start(self, info: TrainInfo) -> None:
        pass

    def on_step(self, step: int, total_steps: int) -> None:
        """After optimiser step ``step`` (1-based count of steps done) of ``total_steps``."""

    def on_epoch_end(self, report: EpochReport) -> None:
        pass

    def before_checkpoint(self, path: str) -> None:
        """Just before the writing rank saves the checkpoint at ``path``; raise to prevent it."""

    def on_checkpoint(self, path: str) -> None:
        pass

    def on_eval_progress(self, done: int, total: int) -> None:
        """The final evaluation's progress, in point-evaluations."""

    def on_train_end(self, metrics: dict[str, Any]) -> None:
        pass


class CallbackList(Callback):
    """Fans every hook out to several callbacks, in order."""

    def __init__(self, callbacks: tuple[Callback, ...] | list[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, info: TrainInfo) -> None:
        for cb in self.callbacks:
            cb.on_train_start(info)

    def on_step(self, step: int, total_steps: int) -> None:
        for cb in self.callbacks:
            cb.on_step(step, total_steps)

    def on_epoch_end(self, report: EpochReport) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(report)

    def before_checkpoint(self, path: str) -> None:
        for cb in self.callbacks:
            cb.before_checkpoint(path)

    def on_checkpoint(self, path: str) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(path)

    def on_eval_progress(self, done: int, total: int) -> None:
        for cb in self.callbacks:
            cb.on_eval_progress(done, total)

    def on_train_end(self, metrics: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_train_end(metrics)


class AttemptFenceCallback(Callback):
    """Refuses to write a checkpoint once a newer attempt of the service job was submitted
    (``workers.contract.attempts``): a stale trainer stops instead of overwriting the job's
    checkpoint that the newer attempt resumes from."""

    def __init__(self, fence: AttemptFence) -> None:
        self.fence = fence

    def on_train_start(self, info: TrainInfo) -> None:
        self.fence.check()

    def before_checkpoint(self, path: str) -> None:
        self.fence.check()
