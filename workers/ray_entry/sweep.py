"""Sweeps: a Ray Tune ``Tuner`` whose trials are Ray Train runs (the Train V2 pattern).

``run_sweep(spec, out_dir, on_trial_event=..., stop_event=...)`` expands the sweep spec into its
trials (``sweep_spec.SweepSpec.trials``: deterministic, validated), and runs one Tune trial per
expanded config. A trial is a ``TrainTrial`` actor that starts a ``TorchTrainer`` (like
``run_train_job``) and hands Tune one result per epoch, so ASHA can stop it between epochs.

Why a class ``Trainable`` rather than a Tune function calling ``fit()``: Tune ends a function trial
by killing its actor, which kills the TorchTrainer's controller before it can release the workers'
placement group; on this machine a cancelled function-trial sweep left 1.98 of 2 CPUs taken (the
Train V2 placement group cleaner needs the Ray dashboard's state API, and is not there in every
deployment). ``TrainTrial.cleanup`` (called when Tune stops a trial, for ASHA or a cancel) instead
asks the run to stop at its next optimiser step and waits for ``fit()`` to return, so the placement
group is released by Ray Train itself.

Layout of ``out_dir``::

    trials/<trial_id>/    each trial's training output (checkpoint/, history.jsonl, metrics.json)
                          and its Ray Train storage (ray/)
    tune/sweep/           Ray Tune's experiment directory
    sweep_result.json     ``SweepResult.to_dict()``

Resources: see ``sweep_spec.plan_resources`` (no deadlock on a small machine). Cancel: set
``stop_event`` or send SIGINT/SIGTERM (``handle_signals``): running trials stop at their next step,
pending trials never start, and every placement group is released before ``run_sweep`` returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.stopper import NoopStopper

from workers.contract.layout import TRIALS_DIR
from workers.contract.spec import TrainSpec
from workers.contract.sweep import (
    Resources,
    SweepSpec,
    best_trial,
    is_unresolved_init,
    parse_sweep_spec,
    plan_resources,
)
from workers.ray_entry.runtime import (
    CANCELLED,
    CHANNEL_NAMESPACE,
    CHECKPOINT,
    EPOCH_END,
    TRAIN_END,
    Event,
    epoch_metrics,
)
from workers.ray_entry.train import (
    FitThread,
    build_trainer,
    ensure_ray,
    forget_ray_run,
    open_channel,
    scaling_config,
    signals_set,
    worker_spec,
)
from workers.training.callbacks import EpochReport

TUNE_DIR = "tune"
RESULT_FILE = "sweep_result.json"
STOP_TIMEOUT_S = 600.0  # a cooperative stop takes one optimiser step; this bounds a hung worker
RESULT_KEY = "ramp"  # our payload inside a Tune result (the rest is Tune's bookkeeping)

TrialEventHandler = Callable[[dict[str, Any]], None]


class TrialFailed(RuntimeError):
    """A trial's training run failed (the message carries the workers' error)."""


class TrialCancelled(RuntimeError):
    """A trial's training run was stopped before its last epoch."""


# --- the trial ---------------------------------------------------------------------------------


class TrainTrial(tune.Trainable):
    """One sweep trial: a TorchTrainer run, surfaced to Tune one epoch per ``step()``."""

    def setup(self, config: dict[str, Any]) -> None:
        self._launch(config)

    def _launch(self, config: dict[str, Any]) -> None:
        trial, run = config["trial"], config["run"]
        self._key = trial["trial_id"]
        self._channel = ray.get_actor(run["channel"], namespace=CHANNEL_NAMESPACE)
        out = Path(run["trials_dir"]) / self._key
        storage = str(out / "ray")
        forget_ray_run(storage)
        trainer = build_trainer(
            TrainSpec.model_validate(trial["spec"]), out, resume=False, channel_name=run["channel"],
            key=self._key, storage_path=storage,
            scaling=scaling_config(Resources.model_validate(run["resources"]),
                                   cpus_per_worker=run["cpus_per_worker"]),
        )
        self._pending: deque[Event] = deque()
        self._checkpoint: str | None = None
        self._final: dict[str, Any] | None = None
        self._cancelled = False
        self._fit = FitThread(trainer)
        self._fit.start()

    def step(self) -> dict[str, Any]:
        while True:
            finished = not self._fit.is_alive()
            self._pending.extend(ray.get(self._channel.take.remote(self._key)))
            result = self._next_result(finished)
            if result is not None:
                return result
            if finished:
                raise self._end_error()
            self._fit.join(0.1)

    def _absorb(self, event: Event) -> None:
        kind, payload = event
        if kind == CHECKPOINT:
            self._checkpoint = payload
        elif kind == TRAIN_END:
            self._final = payload
        elif kind == CANCELLED:
            self._cancelled = True

    def _next_result(self, finished: bool) -> dict[str, Any] | None:
        while self._pending:
            kind, payload = self._pending[0]
            if kind != EPOCH_END:
                self._absorb(self._pending.popleft())
                continue
            last = payload["epoch"] >= payload["epochs"]
            if last and not finished:
                return None  # the final evaluation follows; report the last epoch together with it
            self._pending.popleft()
            if last:
                while self._pending:
                    self._absorb(self._pending.popleft())
                if self._fit.error is not None:
                    raise self._end_error()
            metrics = epoch_metrics(EpochReport.from_dict(payload))
            final = self._final if last else None
            ours = {"metrics": metrics, "checkpoint": self._checkpoint, "final": final}
            return metrics | {RESULT_KEY: ours} | ({"done": True} if last else {})
        return None

    def _end_error(self) -> Exception:
        if self._fit.error is not None:
            return TrialFailed(f"trial {self._key}: {self._fit.error}")
        if self._cancelled:
            return TrialCancelled(f"trial {self._key} was stopped")
        return TrialFailed(f"trial {self._key} ended without reporting its last epoch")

    def _stop(self) -> None:
        if self._fit.is_alive():
            ray.get(self._channel.cancel.remote(self._key))
            self._fit.join(STOP_TIMEOUT_S)

    def cleanup(self) -> None:
        self._stop()

    # Ray Train keeps the training checkpoints; Tune's own (only asked for if a scheduler pauses
    # trials, which ours never do) just records where the run's checkpoint is.
    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        return {"checkpoint": self._checkpoint}

    def load_checkpoint(self, checkpoint: dict[str, Any] | str | None) -> None:
        del checkpoint

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._stop()
        self._launch(new_config)
        return True


# --- the driver side ---------------------------------------------------------------------------


@dataclass
class TrialRecord:
    trial_id: str
    index: int
    config: dict[str, Any]
    status: str = "pending"  # pending, running, succeeded, stopped (by the scheduler), failed, cancelled
    metrics: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    checkpoint: str | None = None
    error: str | None = None
    tune_trial_id: str | None = None


@dataclass
class SweepResult:
    trials: list[dict[str, Any]]
    best_trial_id: str | None
    best_checkpoint: str | None
    metric: str
    mode: str
    cancelled: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Recorder(tune.Callback):
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


class _CancelStopper(tune.Stopper):
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


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _trial_name(trial: Any) -> str:
    """Tune's name and directory of a trial: our deterministic id (not the whole config)."""
    return trial.config["trial"]["trial_id"]


def _scheduler(spec: SweepSpec) -> ASHAScheduler | None:
    if spec.scheduler is None:
        return None
    return ASHAScheduler(
        time_attr="epoch", grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor, max_t=spec.scheduler.max_t or spec.max_epochs(),
    )


def run_sweep(
    sweep_spec: SweepSpec | Mapping[str, Any],
    out_dir: str | Path,
    *,
    on_trial_event: TrialEventHandler | None = None,
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
) -> SweepResult:
    """Run every trial of ``sweep_spec`` (Tune over Train) into ``out_dir``.

    ``on_trial_event(event)`` is called in this thread with ``{"type": "trial_start" |
    "trial_result" | "trial_end", "trial_id", "index", "config", ...}`` (``trial_result`` adds
    ``epoch``, ``metrics``, ``checkpoint``; ``trial_end`` adds ``status``, ``error``, ``final``).
    ``stop_event`` (or SIGINT/SIGTERM when ``handle_signals`` and on the main thread) cancels the
    sweep gracefully. The best trial is the one whose last recorded ``metric`` is best (``mode``).
    """
    spec = sweep_spec if isinstance(sweep_spec, SweepSpec) else parse_sweep_spec(sweep_spec)
    trials = spec.trials()
    if any(is_unresolved_init(t.spec) for t in trials):
        raise ValueError("base.init_from names a job; resolve it to a checkpoint path before running")
    out = Path(out_dir).expanduser().resolve()
    (out / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
    ensure_ray()
    total = ray.cluster_resources()
    resources = spec.resources()
    plan = plan_resources(resources, total_cpus=total.get("CPU", 0.0), total_gpus=total.get("GPU", 0.0),
                          max_concurrent_trials=spec.max_concurrent_trials)
    records = {t.trial_id: TrialRecord(t.trial_id, t.index, dict(t.overrides)) for t in trials}
    stop = stop_event or threading.Event()
    channel, channel_name = open_channel()
    param_space = {
        "trial": tune.grid_search([
            {"trial_id": t.trial_id, "index": t.index, "overrides": t.overrides,
             "spec": worker_spec(TrainSpec.model_validate(t.spec))}
            for t in trials
        ]),
        "run": {"channel": channel_name, "trials_dir": str(out / TRIALS_DIR),
                "resources": resources.model_dump(), "cpus_per_worker": plan.cpus_per_worker},
    }
    recorder = _Recorder(records, on_trial_event, stop)
    tuner = tune.Tuner(
        tune.with_resources(TrainTrial, {"cpu": plan.trial_cpu}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=1, scheduler=_scheduler(spec),
            max_concurrent_trials=plan.max_concurrent_trials, reuse_actors=spec.reuse_actors,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            storage_path=str(out / TUNE_DIR), name="sweep", verbose=0,
            callbacks=[recorder], stop=_CancelStopper(stop, channel),
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
        ),
    )
    started = time.perf_counter()
    try:
        # Tune's own SIGINT handler would abandon running trials; ours stops them gracefully.
        with _env("TUNE_DISABLE_SIGINT_HANDLER", "1"), signals_set(stop, enabled=handle_signals):
            tuner.fit()
    finally:
        ray.kill(channel)
    recorder.finish_unended("cancelled" if stop.is_set() else "failed")
    rows = [asdict(r) for r in records.values()]
    best = best_trial(rows, spec.metric, spec.mode)
    result = SweepResult(
        trials=rows, best_trial_id=best,
        best_checkpoint=records[best].checkpoint if best is not None else None,
        metric=spec.metric, mode=spec.mode, cancelled=stop.is_set(),
        seconds=time.perf_counter() - started,
    )
    (out / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return result
