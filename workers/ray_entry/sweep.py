"""Sweeps: a Ray Tune ``Tuner`` of training trials; the best trial evaluated with the default suite.

``run_sweep(spec, out_dir, on_trial_event=..., stop_event=...)`` expands the sweep spec into its
trials (``workers.contract.sweep.SweepSpec.trials``: deterministic), validates and resolves each
trial's ``TrainSpec`` once (``trial_specs``) and runs one Tune trial per trial, handing it that
typed, resolved spec. A trial is a ``TrainTrial`` actor that hands Tune one result per epoch, so
ASHA can stop it between epochs. How it trains depends on the workers a trial asks for:

- one worker (``resources.num_workers == 1``): the trial runs the training loop itself
  (``run_training`` with a ``LocalRuntime`` on the trial's device, torch threads = the trial's CPUs)
  in a thread of its own actor, and the actor reserves the trial's whole CPU (and GPU) share. A
  TorchTrainer inside the trial would add ~13 s of controller and worker start-up per trial
  (``bench/bench_sweep.py``) for a run that needs no collective.
- several workers: the trial starts a Ray Train ``TorchTrainer`` (the Train V2 pattern, like
  ``run_train_job``); its actor reserves a token CPU and the workers reserve theirs.

Why a class ``Trainable`` rather than a Tune function calling ``fit()``: Tune ends a function trial
by killing its actor, which kills the TorchTrainer's controller before it can release the workers'
placement group; on this machine a cancelled function-trial sweep left 1.98 of 2 CPUs taken (the
Train V2 placement group cleaner needs the Ray dashboard's state API, and is not there in every
deployment). ``TrainTrial.cleanup`` (called when Tune stops a trial, for ASHA or a cancel) instead
asks the run to stop at its next optimiser step and waits for it, so Ray Train releases the
placement group itself. Both kinds of run stop the same way: a cancel flag on the sweep's
``RunChannel`` actor, polled at every optimiser step.

Evaluation. A trial's own final evaluation is the cheap ``monitor`` suite (one APGD-CE run per norm,
``monitor_steps`` iterations: an upper bound on robustness, labelled so by ``suite`` and
``upper_bound`` in its metrics) on ``trial_eval_n(spec)`` test points, the held-out points its
per-epoch curve uses; the loop's own default-suite evaluation is switched off in trials (``eval_n``
only sizes the final evaluation; it never changes the weights). Trials are ranked by ``metric`` in
their last epoch (``workers.contract.sweep.best_trial``). Once every trial has ended, only the best
trial's checkpoint is evaluated with the default suite (``standard``, the trial spec's ``eval_n``
points, the rigour checks on ``checks_n``), as one Ray task holding the CPUs the sweep's trials held:
those are the sweep's final numbers (``SweepResult.best_final``).

Layout of ``out_dir``::

    trials/<trial_id>/    each trial's training output (checkpoint/, history.jsonl, metrics.json:
                          the monitor evaluation, the best trial's the default suite), and, for a
                          Ray Train trial, its Ray Train storage (ray/)
    tune/sweep/           Ray Tune's experiment directory
    sweep_result.json     ``SweepResult.to_dict()``

Resources: see ``sweep_spec.plan_resources`` (no deadlock on a small machine) and
``trial_resources``. Cancel: set ``stop_event`` or send SIGINT/SIGTERM (``handle_signals``): running
trials stop at their next step, pending trials never start, the best trial's evaluation is
cancelled, and every CPU is released before ``run_sweep`` returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.stopper import NoopStopper

from workers import checkpoint
from workers.contract.catalog import DEFAULT_SUITE, UPPER_BOUND_SUITES
from workers.contract.layout import TRIALS_DIR
from workers.contract.spec import TrainSpec
from workers.contract.sweep import (
    MONITOR_METRICS,
    ResourcePlan,
    Resources,
    SweepSpec,
    TrialConfig,
    best_trial,
    is_unresolved_init,
    parse_sweep_spec,
    plan_resources,
)
from workers.datasets import load_tensors
from workers.ray_entry.runtime import (
    CANCELLED,
    CHANNEL_NAMESPACE,
    CHECKPOINT,
    EPOCH_END,
    TRAIN_END,
    Event,
    TrainingCancelled,
    epoch_metrics,
)
from workers.ray_entry.train import (
    FitThread,
    absolute_paths,
    build_trainer,
    ensure_ray,
    forget_ray_run,
    open_channel,
    scaling_config,
    signals_set,
)
from workers.training.artifacts import write_metrics
from workers.training.callbacks import Callback, EpochReport, TrainInfo
from workers.training.evaluation import evaluate_and_record
from workers.training.loop import resolve_spec, run_training
from workers.training.runtime import LocalRuntime

TUNE_DIR = "tune"
RESULT_FILE = "sweep_result.json"
STOP_TIMEOUT_S = 600.0  # a cooperative stop takes one optimiser step; this bounds a hung worker
RESULT_KEY = "ramp"  # our payload inside a Tune result (the rest is Tune's bookkeeping)
IN_TRIAL, RAY_TRAIN = "in-trial", "ray-train"  # how a trial trains (``TrialRecord.runner``)
TRIAL_SUITE = "monitor"  # every trial's own final evaluation (an upper bound)
# Points of a trial's evaluation when the spec has no per-epoch held-out set (monitor_n = 0).
TRIAL_EVAL_N = TrainSpec.model_fields["monitor_n"].default
CANCEL_POLL_S = 0.2  # how often an in-trial run asks the channel whether the sweep was cancelled

TrialEventHandler = Callable[[dict[str, Any]], None]

# The job driver forwards ``workers.*`` log records to the job's log.
log = logging.getLogger(__name__)


class TrialFailed(RuntimeError):
    """A trial's training run failed (the message carries the error)."""


class TrialCancelled(RuntimeError):
    """A trial's training run was stopped before its last epoch."""


# --- evaluating a trial's checkpoint -------------------------------------------------------------


def trial_eval_n(spec: TrainSpec) -> int:
    """Points of a trial's own (monitor) evaluation: the held-out points of its per-epoch curve,
    at most ``eval_n``; ``TRIAL_EVAL_N`` of them when the spec has no per-epoch check."""
    return min(spec.eval_n, spec.monitor_n if spec.monitor_n > 0 else TRIAL_EVAL_N)


def evaluate_checkpoint(
    spec: TrainSpec, out_dir: Path, *, suite: str, n: int, steps: int | None, checks: int,
    device: torch.device | str,
) -> dict[str, Any]:
    """Evaluate ``out_dir/checkpoint`` on the first ``n`` test points of ``spec``'s dataset.

    ``spec`` is resolved. Writes ``out_dir/metrics.json`` (and ``per_sample.npz``) and the metrics
    into the checkpoint's metadata, as the training loop's own final evaluation does; the metrics
    carry ``suite`` and ``upper_bound``, so monitor numbers never pass for default-suite ones.
    """
    ckpt_dir = out_dir / checkpoint.SUBDIR
    extra = {"checkpoint": str(ckpt_dir), "data": f"{spec.dataset}:test"}
    if n <= 0:
        metrics = {"n": 0, "suite": suite, "upper_bound": suite in UPPER_BOUND_SUITES,
                   "epsilons": dict(spec.epsilons)} | extra
        write_metrics(out_dir, metrics)
    else:
        model, _ = checkpoint.load(ckpt_dir, device=device)
        data = load_tensors(spec.dataset, "test", n=n, root=spec.data_root)
        metrics = evaluate_and_record(
            model, data, spec.epsilons, out_dir, suite=suite, n=n, device=device, seed=spec.seed,
            steps=steps, precision=spec.precision, checks=checks, extra=extra,
        )
    checkpoint.update_metadata(ckpt_dir, {"metrics": metrics})
    return metrics


def evaluate_trial(spec: TrainSpec, out_dir: Path, *, device: torch.device | str) -> dict[str, Any]:
    """A trial's own final evaluation: the monitor suite (an upper bound) on ``trial_eval_n`` points.
    ``spec`` is resolved (``trial_specs``)."""
    return evaluate_checkpoint(spec, out_dir, suite=TRIAL_SUITE, n=trial_eval_n(spec),
                               steps=spec.monitor_steps, checks=0, device=device)


def evaluate_trial_task(spec: TrainSpec, out_dir: str, *, device: str, threads: int) -> dict[str, Any]:
    """``evaluate_trial`` as a Ray task (a Ray Train trial's evaluation, on one worker's resources)."""
    torch.set_num_threads(threads)
    return evaluate_trial(spec, Path(out_dir), device=device)


def evaluate_best(spec: TrainSpec, out_dir: str, *, device: str, threads: int) -> dict[str, Any]:
    """The best trial's final evaluation: the default suite on the spec's ``eval_n`` points with the
    rigour checks on ``checks_n`` (what a training run's own final evaluation is). Runs as a Ray task.
    ``spec``: the trial's resolved ``TrainSpec`` (``trial_specs``)."""
    torch.set_num_threads(threads)  # the attacks shard over this many CPU threads
    return evaluate_checkpoint(spec, Path(out_dir), suite=DEFAULT_SUITE, n=spec.eval_n, steps=None,
                               checks=spec.checks_n, device=device)


class TaskCancelled(Exception):
    """``run_task`` was stopped; the task was killed and its resources released."""


def run_task(
    fn: Callable[..., Any], resources: dict[str, float], *args: Any, stop: threading.Event | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(*args, device=..., threads=..., **kwargs)`` as a Ray task holding ``resources``
    (``num_cpus``, ``num_gpus``); its result, or its error raised here.

    Polled so that ``stop`` kills the task at once (``TaskCancelled``), which releases its CPUs.
    """
    # "DEFAULT": called inside a Tune trial, the task would otherwise be placed in the trial's own
    # placement group (Tune captures child tasks), whose bundle is the trial actor's token CPU.
    task = ray.remote(fn).options(max_retries=0, scheduling_strategy="DEFAULT", **resources)
    device = "cuda" if resources.get("num_gpus") else "cpu"
    ref = task.remote(*args, device=device, threads=max(1, round(resources["num_cpus"])), **kwargs)
    while True:
        ready, _ = ray.wait([ref], timeout=0.2)
        if ready:
            return ray.get(ref)
        if stop is not None and stop.is_set():
            ray.cancel(ref, force=True)
            raise TaskCancelled(f"{fn.__name__} was cancelled")


# --- the trial's run: in the trial's own actor, or on Ray Train workers -------------------------


class _StopWatch(Callback):
    """Raises ``TrainingCancelled`` at the next optimiser step once ``stop`` is set or ``poll()``
    (asked at most every ``poll_s``) says so; checked before the first step too."""

    def __init__(
        self, stop: threading.Event, poll: Callable[[], bool], poll_s: float = CANCEL_POLL_S
    ) -> None:
        self.stop, self.poll, self.poll_s = stop, poll, poll_s
        self._last_poll = -float("inf")

    def _check(self, where: str) -> None:
        now = time.monotonic()
        if not self.stop.is_set() and now - self._last_poll >= self.poll_s:
            self._last_poll = now
            if self.poll():
                self.stop.set()
        if self.stop.is_set():
            raise TrainingCancelled(f"cancelled {where}")

    def on_train_start(self, info: TrainInfo) -> None:
        self._check("before the first step")

    def on_step(self, step: int, total_steps: int) -> None:
        self._check(f"after step {step} of {total_steps}")


class _Collector(Callback):
    """The loop's checkpoint and epoch events, in the form a Ray Train run sends them."""

    def __init__(self, events: deque[Event]) -> None:
        self.events = events

    def on_checkpoint(self, path: str) -> None:
        self.events.append((CHECKPOINT, path))

    def on_epoch_end(self, report: EpochReport) -> None:
        self.events.append((EPOCH_END, report.to_dict()))


class _ThreadedRun:
    """A trial's run, driven from a thread of the trial's actor (``_thread``): started, watched and
    waited on by ``TrainTrial`` alike whichever way it trains."""

    runner: str
    _thread: threading.Thread

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class LocalRun(_ThreadedRun):
    """The training loop in a thread of the trial's own actor (one worker, no Ray Train).

    Events (checkpoint, epoch end, then ``TRAIN_END`` with the trial's evaluation, or
    ``CANCELLED``) collect in memory; ``take()`` hands them over in order.
    """

    runner = IN_TRIAL

    def __init__(
        self, spec: TrainSpec, out_dir: Path, *, device: torch.device | str,
        poll_cancel: Callable[[], bool] = lambda: False,
    ) -> None:
        self.spec, self.out_dir, self.device = spec, out_dir, device
        self.error: BaseException | None = None
        self._events: deque[Event] = deque()  # appends and pops are atomic across threads
        self._stop = threading.Event()
        self._watch = _StopWatch(self._stop, poll_cancel)
        self._thread = threading.Thread(target=self._run, name="in-trial-training", daemon=True)

    def _run(self) -> None:
        try:
            # The loop's own final evaluation (the default suite) is the best trial's alone.
            run_training(self.spec.model_copy(update={"eval_n": 0}), self.out_dir,
                         callbacks=[self._watch, _Collector(self._events)],
                         runtime=LocalRuntime(self.device))
            self._events.append((TRAIN_END, evaluate_trial(self.spec, self.out_dir, device=self.device)))
        except TrainingCancelled as e:
            self._events.append((CANCELLED, str(e)))
        except BaseException as e:  # handed to the trial's thread
            self.error = e

    def take(self) -> list[Event]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)

    def describe_error(self) -> str:
        if self.error is None:
            return ""
        return "".join(traceback.format_exception(self.error)).strip()


class TrainRun(_ThreadedRun):
    """A TorchTrainer run (several workers); its events come through the sweep's channel.

    Its workers run the loop with the default-suite evaluation switched off; when the run's
    ``TRAIN_END`` arrives, the trial's own evaluation replaces its payload. It runs as a Ray task on
    one worker's resources (its GPU too), which the run's workers release as they finish: this
    trial still holds its concurrency slot, so no other trial can take them first.
    """

    runner = RAY_TRAIN

    def __init__(self, spec: TrainSpec, out_dir: Path, *, channel: Any, channel_name: str, key: str,
                 resources: Resources, cpus_per_worker: float) -> None:
        self.spec, self.out_dir = spec, out_dir
        self._channel, self._key = channel, key
        self._eval_resources = {"num_cpus": cpus_per_worker, "num_gpus": 1.0 if resources.use_gpu else 0.0}
        storage = str(out_dir / "ray")
        forget_ray_run(storage)
        trainer = build_trainer(
            spec.model_copy(update={"eval_n": 0}), out_dir, resume=False, channel_name=channel_name,
            key=key, storage_path=storage, scaling=scaling_config(resources, cpus_per_worker=cpus_per_worker),
        )
        self._thread = FitThread(trainer)  # ``trainer.fit()``: waits on the Ray Train workers

    @property
    def error(self) -> BaseException | None:
        return self._thread.error

    def take(self) -> list[Event]:
        events = ray.get(self._channel.take.remote(self._key))
        return [(TRAIN_END, self._evaluate()) if kind == TRAIN_END else (kind, payload)
                for kind, payload in events]

    def _evaluate(self) -> dict[str, Any]:
        return run_task(evaluate_trial_task, self._eval_resources, self.spec, str(self.out_dir))

    def stop(self) -> None:
        if self._thread.is_alive():
            ray.get(self._channel.cancel.remote(self._key))
            self._thread.join(STOP_TIMEOUT_S)

    def describe_error(self) -> str:
        return "" if self._thread.error is None else str(self._thread.error)


def _cancel_flag(channel: Any, key: str) -> Callable[[], bool]:
    """Whether run ``key`` was cancelled: the sweep's cancel (``_CancelStopper``) and a trial's
    ``cleanup`` both raise the channel's flag."""
    return lambda: bool(ray.get(channel.is_cancelled.remote(key)))


# --- the trial ---------------------------------------------------------------------------------


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
        spec = TrainSpec.model_validate(trial["spec"])  # run_sweep's resolved TrainSpec, taken as it is
        resources = Resources.model_validate(run["resources"])
        # Process-wide; a trial actor runs one trial at a time.
        torch.set_num_threads(run["threads"])
        launched: LocalRun | TrainRun
        if run["runner"] == IN_TRIAL:
            device = "cuda" if resources.use_gpu else "cpu"
            launched = LocalRun(spec, out, device=device, poll_cancel=_cancel_flag(channel, key))
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


# --- the driver side ---------------------------------------------------------------------------


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


def numbers_legend(metric: str) -> dict[str, dict[str, Any]]:
    """Which numbers of a sweep result come from which evaluation suite (stored with the result)."""
    return {
        "best_final": {"suite": DEFAULT_SUITE, "upper_bound": False,
                       "what": "the best trial's checkpoint: the default suite on eval_n points, "
                               "the rigour checks on checks_n; the sweep's final numbers"},
        "trials.final": {"suite": TRIAL_SUITE, "upper_bound": True,
                         "what": "each trial's own evaluation: the monitor suite on its held-out points"},
        "trials.metrics": {"suite": TRIAL_SUITE, "upper_bound": True,
                           "what": "per-epoch curves: held-out accuracies (monitor), losses (loss_*) and "
                                   "training robust accuracies (train_acc_*)"},
        "best_score": {"metric": metric, "upper_bound": metric in MONITOR_METRICS,
                       "what": "what trials are ranked by: the metric in their last epoch"},
    }


@dataclass
class SweepResult:
    trials: list[dict[str, Any]]
    best_trial_id: str | None
    best_checkpoint: str | None
    metric: str
    mode: str
    cancelled: bool
    seconds: float
    # The sweep's final numbers: the default suite on the best trial's checkpoint (None when there
    # is no best trial, the sweep was cancelled, or that evaluation failed: ``best_final_error``).
    best_final: dict[str, Any] | None = None
    best_final_error: str | None = None
    trials_seconds: float = 0.0  # Tune's part: every trial, start to end
    best_final_seconds: float = 0.0  # the best trial's evaluation, task start-up included
    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)  # ``numbers_legend``

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


def _cpus(x: float) -> float:
    # Ray counts CPUs in 1e-4 units; the plan's shares are such multiples up to float noise.
    return round(x, 4)


def trial_runner(plan: ResourcePlan) -> str:
    """How a trial trains: in its own actor with one worker, on Ray Train with more."""
    return IN_TRIAL if plan.num_workers == 1 else RAY_TRAIN


def trial_resources(plan: ResourcePlan) -> dict[str, float]:
    """What Tune reserves for one trial actor.

    An in-trial run trains in the actor, so the actor takes the trial's whole share
    (``plan.cpus_per_trial``, and its GPU); a Ray Train trial's actor only waits on its
    TorchTrainer and takes ``plan.trial_cpu``, its workers reserve the rest. Either way no trial
    asks for anything after Tune admitted it beyond what ``plan_resources`` sized, so
    ``max_concurrent_trials`` trials always fit at once (no deadlock on 2 CPUs).
    """
    if trial_runner(plan) == IN_TRIAL:
        return {"cpu": _cpus(plan.cpus_per_trial)} | ({"gpu": 1.0} if plan.use_gpu else {})
    return {"cpu": _cpus(plan.trial_cpu)}


def trial_threads(plan: ResourcePlan) -> int:
    """Torch threads of a trial's actor: its workers' CPU share in-trial, one waiting on Ray Train."""
    if trial_runner(plan) == IN_TRIAL:
        return max(1, round(plan.num_workers * plan.cpus_per_worker))
    return 1


def best_final_resources(plan: ResourcePlan, total_cpus: float) -> dict[str, float]:
    """The best trial's evaluation runs once every trial has ended: it takes what the concurrent
    trials held (their CPUs, one GPU), so it never waits on resources the sweep itself freed."""
    cpus = _cpus(min(total_cpus, plan.max_concurrent_trials * plan.cpus_per_trial))
    return {"num_cpus": cpus, "num_gpus": 1.0 if plan.use_gpu else 0.0}


def _run_best_final(
    trial_id: str, spec: TrainSpec, trial_dir: Path, resources: dict[str, float], stop: threading.Event,
) -> tuple[dict[str, Any] | None, str | None]:
    """The default-suite evaluation of the best trial as a Ray task: (metrics, None), (None, error),
    or (None, None) when ``stop`` cancelled it."""
    try:
        return run_task(evaluate_best, resources, spec, str(trial_dir), stop=stop), None
    except TaskCancelled:
        return None, None
    except Exception as e:  # the task's error, with its traceback, into the result
        return None, f"evaluating {trial_id} with the default suite failed: {str(e)[-2000:]}"


def trial_specs(trials: Iterable[TrialConfig]) -> dict[str, TrainSpec]:
    """Each trial's ``TrainSpec``, validated and resolved once, here (a swept method or dataset
    changes the defaults, so a sweep's base is stored unresolved), paths made absolute. The trials'
    actors and the best trial's evaluation take these objects as they are."""
    return {t.trial_id: absolute_paths(resolve_spec(TrainSpec.model_validate(t.spec))) for t in trials}


def run_sweep(
    sweep_spec: SweepSpec | Mapping[str, Any],
    out_dir: str | Path,
    *,
    on_trial_event: TrialEventHandler | None = None,
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
) -> SweepResult:
    """Run every trial of ``sweep_spec`` into ``out_dir``, then evaluate the best one.

    ``on_trial_event(event)`` is called in this thread with ``{"type": "trial_start" |
    "trial_result" | "trial_end", "trial_id", "index", "config", ...}`` (``trial_result`` adds
    ``epoch``, ``metrics``, ``checkpoint``; ``trial_end`` adds ``status``, ``error``, ``final``: the
    trial's own monitor evaluation). The best trial's default-suite evaluation is
    ``SweepResult.best_final``.
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
    specs = trial_specs(trials)
    stop = stop_event or threading.Event()
    channel, channel_name = open_channel()
    param_space = {
        "trial": tune.grid_search([
            {"trial_id": t.trial_id, "index": t.index, "overrides": t.overrides, "spec": specs[t.trial_id]}
            for t in trials
        ]),
        "run": {"channel": channel_name, "trials_dir": str(out / TRIALS_DIR),
                "resources": resources.model_dump(), "cpus_per_worker": plan.cpus_per_worker,
                "runner": trial_runner(plan), "threads": trial_threads(plan)},
    }
    recorder = _Recorder(records, on_trial_event, stop)
    tuner = tune.Tuner(
        tune.with_resources(TrainTrial, trial_resources(plan)),
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
    best_final, best_final_error, final_started = None, None, None
    # Tune's own SIGINT handler would abandon running trials; ours stops them gracefully.
    with _env("TUNE_DISABLE_SIGINT_HANDLER", "1"), signals_set(stop, enabled=handle_signals):
        try:
            tuner.fit()
        finally:
            ray.kill(channel)
        trials_seconds = time.perf_counter() - started
        recorder.finish_unended("cancelled" if stop.is_set() else "failed")
        rows = [asdict(r) for r in records.values()]
        best = best_trial(rows, spec.metric, spec.mode)
        if best is not None and not stop.is_set():
            trial_spec = specs[best]
            log.info("evaluating the best trial %s with the default suite on %d points (rigour checks on %d)",
                     best, trial_spec.eval_n, min(trial_spec.checks_n, trial_spec.eval_n))
            final_started = time.perf_counter()
            best_final, best_final_error = _run_best_final(
                best, specs[best], out / TRIALS_DIR / best, best_final_resources(plan, total.get("CPU", 0.0)),
                stop,
            )
    result = SweepResult(
        trials=rows, best_trial_id=best,
        best_checkpoint=records[best].checkpoint if best is not None else None,
        metric=spec.metric, mode=spec.mode, cancelled=stop.is_set(),
        seconds=time.perf_counter() - started, best_final=best_final, best_final_error=best_final_error,
        trials_seconds=trials_seconds,
        best_final_seconds=time.perf_counter() - final_started if final_started is not None else 0.0,
        numbers=numbers_legend(spec.metric),
    )
    (out / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return result
