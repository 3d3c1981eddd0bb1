"""The driver's side of a sweep's Tune loop: ``Recorder`` records every trial (``TrialRecord``) and
tells the caller as it goes; ``CancelStopper`` stops the whole sweep once it is cancelled."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.stopper import NoopStopper

from workers.ray_entry.sweep.trainable import RESULT_KEY

TrialEventHandler = Callable[[dict[str, Any]], None]


@dataclass
class TrialRecord:
    trial_id: str
    index: int
    config: dict[str, Any]
    status: str = "pending"  # pending, running, succeeded, stopped (by the scheduler), failed, cancelled
    metrics: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None  # the trial's own evaluation: the monitor suite (an upper bound)
    checkpoint: str | None = None
    error: str | None = None
    tune_trial_id: str | None = None
    runner: str | None = None  # IN_TRIAL or RAY_TRAIN, as the trial reported it


class Recorder(tune.Callback):
    """Runs in the driver's Tune loop: records every trial and tells ``on_event`` as it goes."""

    def __init__(
        self, records: dict[str, TrialRecord], on_event: TrialEventHandler | None,
        cancelled: threading.Event,
    ) -> None:
        self.records, self.on_event, self.cancelled = records, on_event, cancelled

    def __reduce__(self) -> tuple[Any, ...]:
        # Tune pickles its callbacks into the experiment state; ours holds live driver objects.
        return (tune.Callback, ())

    def _emit(self, kind: str, rec: TrialRecord, **extra: Any) -> None:
        if self.on_event is not None:
            self.on_event({"type": kind, "trial_id": rec.trial_id, "index": rec.index,
                           "config": rec.config} | extra)

    def _record(self, trial: Any) -> TrialRecord:
        return self.records[trial.config["trial"]["trial_id"]]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._record(trial)
        rec.status, rec.tune_trial_id = "running", trial.trial_id
        self._emit("trial_start", rec, status=rec.status)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rec = self._record(trial)
        ours = result[RESULT_KEY]
        rec.metrics.append(dict(ours["metrics"]))
        rec.checkpoint = ours["checkpoint"] or rec.checkpoint
        rec.runner = ours.get("runner") or rec.runner
        if ours["final"] is not None:
            rec.final = ours["final"]
        self._emit("trial_result", rec, epoch=ours["metrics"]["epoch"], metrics=ours["metrics"],
                   checkpoint=rec.checkpoint)

    def _end(self, rec: TrialRecord, status: str, error: str | None = None) -> None:
        rec.status, rec.error = status, error
        self._emit("trial_end", rec, status=status, error=error, final=rec.final, checkpoint=rec.checkpoint)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._record(trial)
        if rec.final is not None:
            self._end(rec, "succeeded")
        else:
            self._end(rec, "cancelled" if self.cancelled.is_set() else "stopped")

    def finish_unended(self, status: str) -> None:
        """End the trials Tune never ended (not started, or stopped with the whole sweep)."""
        for rec in self.records.values():
            if rec.status in ("pending", "running"):
                self._end(rec, status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._record(trial)
        if self.cancelled.is_set():
            self._end(rec, "cancelled")
        else:
            text = trial.get_error() or "unknown error"
            self._end(rec, "failed", str(text).strip()[-2000:])


class CancelStopper(tune.Stopper):
    """Stops the whole sweep once ``stop_event`` is set, after telling every run to stop."""

    def __init__(self, stop_event: threading.Event, channel: Any) -> None:
        self.stop_event, self.channel = stop_event, channel
        self._sent = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (NoopStopper, ())

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if not self.stop_event.is_set():
            return False
        if not self._sent:
            # Running trials stop at their next step even before Tune gets to them.
            ray.get(self.channel.cancel.remote(None))
            self._sent = True
        return True
