"""``run_sweep``: a sweep's Ray Tune ``Tuner`` of training trials, driven from the job driver; the
best trial evaluated with the default suite once every trial has ended.

``run_sweep(spec, out_dir, on_trial_event=..., stop_event=...)`` expands the sweep spec into its
trials once (``workers.contract.sweep.SweepSpec.expand``: deterministic, each trial's
``ResolvedSpec``, exactly the trial rows the service stored; ``trial_specs``) and runs one Tune
trial (``trainable.TrainTrial``) per trial, handing it that typed, resolved spec. How a trial
trains depends on the workers it asks for
(``resources.trial_runner``):

- one worker (``resources.num_workers == 1``): the trial runs the training loop itself
  (``run_training`` with a ``LocalRuntime`` on the trial's device, torch threads = the trial's CPUs)
  in a thread of its own actor, and the actor reserves the trial's whole CPU (and GPU) share. A
  TorchTrainer inside the trial would add ~13 s of controller and worker start-up per trial
  (``bench/bench_sweep.py``) for a run that needs no collective.
- several workers: the trial starts a Ray Train ``TorchTrainer`` (the Train V2 pattern, like
  ``run_train_job``); its actor reserves a token CPU and the workers reserve theirs.

Evaluation (``evaluation``). A trial's own final evaluation is the cheap ``monitor`` suite (one
APGD-CE run per norm, ``monitor_steps`` iterations: an upper bound on robustness, labelled so by
``suite`` and ``upper_bound`` in its metrics) on ``trial_eval_n(spec)`` test points, the held-out
points its per-epoch curve uses; the loop's own default-suite evaluation is switched off in trials
(``eval_n`` only sizes the final evaluation; it never changes the weights). Trials are ranked by
``metric`` in their last epoch (``workers.contract.sweep.best_trial``). Once every trial has ended,
only the best trial's checkpoint is evaluated with the default suite (``standard``, the trial spec's
``eval_n`` points, the rigour checks on ``checks_n``), as one Ray task holding the CPUs the sweep's
trials held: those are the sweep's final numbers (``SweepResult.best_final``).

Layout of ``out_dir``::

    trials/<trial_id>/    each trial's training output (checkpoint/, history.jsonl, metrics.json:
                          the monitor evaluation, the best trial's the default suite), and, for a
                          Ray Train trial, its Ray Train storage (ray/)
    tune/sweep/           Ray Tune's experiment directory
    sweep_result.json     ``SweepResult.to_dict()``

Resources: see ``workers.contract.sweep.plan_resources`` (no deadlock on a small machine) and
``resources.trial_resources``. Cancel: set ``stop_event`` or send SIGINT/SIGTERM
(``handle_signals``): running trials stop at their next step, pending trials never start, the best
trial's evaluation is cancelled, and every CPU is released before ``run_sweep`` returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from workers.contract.catalog import DEFAULT_SUITE
from workers.contract.layout import SWEEP_RESULT_FILE, TRIALS_DIR
from workers.contract.ray_names import current_run_name
from workers.contract.spec import ResolvedSpec
from workers.contract.sweep import (
    MONITOR_METRICS,
    ResolvedTrial,
    SweepSpec,
    best_trial,
    plan_resources,
)
from workers.ray_entry.sweep.evaluation import TRIAL_SUITE, run_best_final
from workers.ray_entry.sweep.recorder import CancelStopper, Recorder, TrialEventHandler, TrialRecord
from workers.ray_entry.sweep.resources import (
    best_final_resources,
    largest_node_cpus,
    trial_resources,
    trial_runner,
    trial_threads,
)
from workers.ray_entry.sweep.trainable import TrainTrial
from workers.ray_entry.train import absolute_paths, ensure_ray, open_channel, signals_set

TUNE_DIR = "tune"
RESULT_FILE = SWEEP_RESULT_FILE

# The job driver forwards ``workers.*`` log records to the job's log.
log = logging.getLogger(__name__)


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


def trial_name(trial: Any) -> str:
    """Tune's name and directory of a trial: our deterministic id (not the whole config)."""
    return trial.config["trial"]["trial_id"]


def asha_scheduler(spec: SweepSpec, specs: dict[str, ResolvedSpec]) -> ASHAScheduler | None:
    if spec.scheduler is None:
        return None
    max_t = spec.scheduler.max_t or max(s.epochs for s in specs.values())
    return ASHAScheduler(time_attr="epoch", grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor, max_t=max_t)


def trial_specs(spec: SweepSpec) -> dict[str, ResolvedSpec]:
    """Each trial's ``ResolvedSpec`` from the sweep's one expansion, paths made absolute. The trials'
    actors and the best trial's evaluation take these objects as they are."""
    return runnable_specs(spec.expand())


def runnable_specs(trials: list[ResolvedTrial]) -> dict[str, ResolvedSpec]:
    return {t.trial_id: absolute_paths(t.spec) for t in trials}


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    on_trial_event: TrialEventHandler | None = None,
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
) -> SweepResult:
    """Run every trial of ``spec`` into ``out_dir``, then evaluate the best one.

    ``on_trial_event(event)`` is called in this thread with ``{"type": "trial_start" |
    "trial_result" | "trial_end", "trial_id", "index", "config", ...}`` (``trial_result`` adds
    ``epoch``, ``metrics``, ``checkpoint``; ``trial_end`` adds ``status``, ``error``, ``final``: the
    trial's own monitor evaluation). The best trial's default-suite evaluation is
    ``SweepResult.best_final``.
    ``stop_event`` (or SIGINT/SIGTERM when ``handle_signals`` and on the main thread) cancels the
    sweep gracefully. The best trial is the one whose last recorded ``metric`` is best (``mode``).
    """
    if not isinstance(spec, SweepSpec):
        raise TypeError(f"run_sweep takes a SweepSpec, not {type(spec).__name__}")
    trials = spec.expand()
    specs = runnable_specs(trials)
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
            {"trial_id": t.trial_id, "index": t.index, "overrides": t.overrides, "spec": specs[t.trial_id]}
            for t in trials
        ]),
        "run": {"channel": channel_name, "trials_dir": str(out / TRIALS_DIR),
                "resources": resources.model_dump(), "cpus_per_worker": plan.cpus_per_worker,
                "runner": trial_runner(plan), "threads": trial_threads(plan)},
    }
    recorder = Recorder(records, on_trial_event, stop)
    tuner = tune.Tuner(
        tune.with_resources(TrainTrial, trial_resources(plan)),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=1, scheduler=asha_scheduler(spec, specs),
            max_concurrent_trials=plan.max_concurrent_trials, reuse_actors=spec.reuse_actors,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            storage_path=str(out / TUNE_DIR), name=current_run_name("sweep"), verbose=0,
            callbacks=[recorder], stop=CancelStopper(stop, channel),
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
            best_final, best_final_error = run_best_final(
                best, specs[best], out / TRIALS_DIR / best,
                best_final_resources(plan, total.get("CPU", 0.0), largest_node_cpus(ray.nodes())), stop,
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
