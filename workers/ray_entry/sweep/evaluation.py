"""Evaluating a sweep trial's checkpoint, and running such an evaluation as a Ray task.

A trial's own final evaluation is the cheap ``monitor`` suite (an upper bound, labelled so by
``suite`` and ``upper_bound`` in its metrics) on ``trial_eval_n(spec)`` test points; once every
trial has ended, only the best trial's checkpoint is evaluated with the default suite
(``evaluate_best``), as one Ray task (``run_best_final``) holding the CPUs the trials held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from workers import checkpoint
from workers.contract.catalog import DEFAULT_SUITE, UPPER_BOUND_SUITES
from workers.contract.spec import ResolvedSpec
from workers.datasets import load_tensors
from workers.training.artifacts import write_metrics
from workers.training.evaluation import evaluate_and_record

TRIAL_SUITE = "monitor"  # every trial's own final evaluation (an upper bound)
# Points of a trial's evaluation when the spec has no per-epoch held-out set (monitor_n = 0).
TRIAL_EVAL_N = ResolvedSpec.model_fields["monitor_n"].default


def trial_eval_n(spec: ResolvedSpec) -> int:
    """Points of a trial's own (monitor) evaluation: the held-out points of its per-epoch curve,
    at most ``eval_n``; ``TRIAL_EVAL_N`` of them when the spec has no per-epoch check."""
    return min(spec.eval_n, spec.monitor_n if spec.monitor_n > 0 else TRIAL_EVAL_N)


def evaluate_checkpoint(
    spec: ResolvedSpec, out_dir: Path, *, suite: str, n: int, steps: int | None, checks: int,
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


def evaluate_trial(spec: ResolvedSpec, out_dir: Path, *, device: torch.device | str) -> dict[str, Any]:
    """A trial's own final evaluation: the monitor suite (an upper bound) on ``trial_eval_n`` points.
    ``spec`` is resolved (``trial_specs``)."""
    return evaluate_checkpoint(spec, out_dir, suite=TRIAL_SUITE, n=trial_eval_n(spec),
                               steps=spec.monitor_steps, checks=0, device=device)


def evaluate_trial_task(spec: ResolvedSpec, out_dir: str, *, device: str, threads: int) -> dict[str, Any]:
    """``evaluate_trial`` as a Ray task (a Ray Train trial's evaluation, on one worker's resources)."""
    torch.set_num_threads(threads)
    return evaluate_trial(spec, Path(out_dir), device=device)


def evaluate_best(spec: ResolvedSpec, out_dir: str, *, device: str, threads: int) -> dict[str, Any]:
    """The best trial's final evaluation: the default suite on the spec's ``eval_n`` points with the
    rigour checks on ``checks_n`` (what a training run's own final evaluation is). Runs as a Ray task.
    ``spec``: the trial's resolved ``ResolvedSpec`` (``trial_specs``)."""
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


def run_best_final(
    trial_id: str, spec: ResolvedSpec, trial_dir: Path, resources: dict[str, float], stop: threading.Event,
) -> tuple[dict[str, Any] | None, str | None]:
    """The default-suite evaluation of the best trial as a Ray task: (metrics, None), (None, error),
    or (None, None) when ``stop`` cancelled it."""
    try:
        return run_task(evaluate_best, resources, spec, str(trial_dir), stop=stop), None
    except TaskCancelled:
        return None, None
    except Exception as e:  # the task's error, with its traceback, into the result
        return None, f"evaluating {trial_id} with the default suite failed: {str(e)[-2000:]}"
