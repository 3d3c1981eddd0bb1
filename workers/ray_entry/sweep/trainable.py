"""The Tune ``Trainable`` of a sweep trial: a training run (``runs.LocalRun`` or ``runs.TrainRun``)
surfaced to Tune one epoch per ``step()``, so ASHA can stop it between epochs.

Why a class ``Trainable`` rather than a Tune function calling ``fit()``: Tune ends a function trial
by killing its actor, which kills the TorchTrainer's controller before it can release the workers'
placement group; on this machine a cancelled function-trial sweep left 1.98 of 2 CPUs taken (the
Train V2 placement group cleaner needs the Ray dashboard's state API, and is not there in every
deployment). ``TrainTrial.cleanup`` (called when Tune stops a trial, for ASHA or a cancel) instead
asks the run to stop at its next optimiser step and waits for it, so Ray Train releases the
placement group itself.
"""

from __future__ import annotations

import uuid
from collections import deque
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from workers.contract.spec import ResolvedSpec, Resources
from workers.ray_entry.runtime import (
    CANCELLED,
    CHANNEL_NAMESPACE,
    CHECKPOINT,
    EPOCH_END,
    TRAIN_END,
    Event,
    epoch_metrics,
)
from workers.ray_entry.sweep.resources import IN_TRIAL
from workers.ray_entry.sweep.runs import LocalRun, TrainRun, cancel_flag
from workers.training.callbacks import EpochReport

RESULT_KEY = "ramp"  # our payload inside a Tune result (the rest is Tune's bookkeeping)


class TrialFailed(RuntimeError):
    """A trial's training run failed (the message carries the error)."""


class TrialCancelled(RuntimeError):
    """A trial's training run was stopped before its last epoch."""


class TrainTrial(tune.Trainable):
    """One sweep trial: a training run (``LocalRun`` or ``TrainRun``), surfaced to Tune one epoch
    per ``step()``."""

    def setup(self, config: dict[str, Any]) -> None:
        self._prepare(config)

    def _prepare(self, config: dict[str, Any]) -> None:
        # The run starts at the first ``step()``, not here: Tune may drop a freshly set-up actor and
        # give its trial a cached one instead (``reuse_actors``), and the dropped actor must neither
        # have trained into the trial's directory nor, stopping, cancel the trial's new run.
        self._config = config
        self._key = config["trial"]["trial_id"]
        self._run: LocalRun | TrainRun | None = None
        self._run_key: str | None = None  # the run's key on the channel: unique per run, not per trial
        self._pending: deque[Event] = deque()
        self._checkpoint: str | None = None
        self._final: dict[str, Any] | None = None
        self._cancelled: str | None = None  # why the run stopped early

    def _launch(self) -> LocalRun | TrainRun:
        trial, run = self._config["trial"], self._config["run"]
        self._channel = channel = ray.get_actor(run["channel"], namespace=CHANNEL_NAMESPACE)
        self._run_key = key = f"{self._key}/{uuid.uuid4().hex[:12]}"
        out = Path(run["trials_dir"]) / self._key
        spec = ResolvedSpec.model_validate(trial["spec"])  # run_sweep's own object, taken as it is
        resources = Resources.model_validate(run["resources"])
        # Process-wide; a trial actor runs one trial at a time.
        torch.set_num_threads(run["threads"])
        launched: LocalRun | TrainRun
        if run["runner"] == IN_TRIAL:
            device = "cuda" if resources.use_gpu else "cpu"
            launched = LocalRun(spec, out, device=device, poll_cancel=cancel_flag(channel, key))
        else:
            launched = TrainRun(spec, out, channel=channel, channel_name=run["channel"], key=key,
                                resources=resources, cpus_per_worker=run["cpus_per_worker"])
        launched.start()
        return launched

    def step(self) -> dict[str, Any]:
        if self._run is None:
            self._run = self._launch()
        while True:
            finished = not self._run.is_alive()
            self._pending.extend(self._run.take())
            result = self._next_result(finished)
            if result is not None:
                return result
            if finished:
                raise self._end_error()
            self._run.join(0.1)

    def _absorb(self, event: Event) -> None:
        kind, payload = event
        if kind == CHECKPOINT:
            self._checkpoint = payload
        elif kind == TRAIN_END:
            self._final = payload
        elif kind == CANCELLED:
            self._cancelled = payload or "stopped"

    def _next_result(self, finished: bool) -> dict[str, Any] | None:
        while self._pending:
            kind, payload = self._pending[0]
            if kind != EPOCH_END:
                self._absorb(self._pending.popleft())
                continue
            last = payload["epoch"] >= payload["epochs"]
            if last and not finished:
                return None  # the trial's evaluation follows; report the last epoch together with it
            self._pending.popleft()
            if last:
                while self._pending:
                    self._absorb(self._pending.popleft())
                if self._run.error is not None:
                    raise self._end_error()
            metrics = epoch_metrics(EpochReport.from_dict(payload))
            final = self._final if last else None
            ours = {"metrics": metrics, "checkpoint": self._checkpoint, "final": final,
                    "runner": self._run.runner}
            return metrics | {RESULT_KEY: ours} | ({"done": True} if last else {})
        return None

    def _end_error(self) -> Exception:
        if self._run.error is not None:
            return TrialFailed(f"trial {self._key}: {self._run.describe_error()}")
        if self._cancelled:
            return TrialCancelled(f"trial {self._key} was stopped: {self._cancelled}")
        return TrialFailed(f"trial {self._key} ended without reporting its last epoch")

    def _stop(self) -> None:
        if self._run is not None and self._run.is_alive():
            ray.get(self._channel.cancel.remote(self._run_key))
            self._run.stop()

    def cleanup(self) -> None:
        self._stop()

    # The run keeps the training checkpoints; Tune's own (only asked for if a scheduler pauses
    # trials, which ours never do) just records where the run's checkpoint is.
    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        return {"checkpoint": self._checkpoint}

    def load_checkpoint(self, checkpoint: dict[str, Any] | str | None) -> None:
        del checkpoint

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._stop()
        self._prepare(new_config)
        return True

