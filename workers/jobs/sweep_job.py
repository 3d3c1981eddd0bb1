"""The sweep job kind of the job driver: run a sweep (``workers.ray_entry.sweep.run_sweep``) and
report its trials to the service.

Every trial event becomes a ``trial`` event of the job (``{"event": "trial_start" | "trial_result"
| "trial_end" | "sweep_start", "trial_id", ...}``), sent through the driver's ``Reporter``: numbered,
spooled on disk and retried, so the service's trial rows survive a service restart exactly as the
job's other events do. Checkpoint paths are reported relative to the job directory, which makes
them artifact names of the sweep job. The best trial's checkpoint is also linked as the job's own
``checkpoint/`` (hard links to its files), so the artifact list shows it at the usual place.

Two suites, never mixed up: a trial's ``final`` is its own cheap ``monitor`` evaluation (an upper
bound; its metrics say ``"suite": "monitor", "upper_bound": true``), and only the best trial is
evaluated with the default suite once every trial has ended. That evaluation is sent as a second
``trial_end`` of the best trial (``TrialEventForwarder.best_final``).

The result (the job's final metrics) is the best trial's default-suite evaluation (``clean``,
``linf``, ``l2``, ``l1``, ``union``, ``n``, ``suite``, ``checks``, ...) plus ``best_trial_id``,
``best_checkpoint``, ``best_config``, ``best_score``, ``best_monitor`` (the best trial's own monitor
evaluation: an upper bound), ``numbers`` (which numbers come from which suite), ``metric``,
``mode``, ``num_trials`` and ``trials`` (trial counts by status).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from workers.contract.layout import CHECKPOINT_DIR
from workers.contract.sweep import SweepSpec, trial_score

TRIAL_EVENT = "trial"
BEST_CHECKPOINT = CHECKPOINT_DIR  # the job's own checkpoint: a link to the best trial's


class SweepReporter(Protocol):
    """What of ``workers.jobs.reporter.Reporter`` a sweep uses."""

    def emit(self, type_: str, data: dict[str, Any]) -> int: ...

    def progress(self, step: int, total_steps: int, *, force: bool = False, **extra: Any) -> int | None: ...

    def log(self, message: str, *, level: str = "info", **extra: Any) -> int: ...


class SweepCancelled(Exception):
    """The sweep was stopped (a cancel) before every trial finished; its trials are stopped too."""


class SweepFailed(RuntimeError):
    """No trial of the sweep produced its metric."""


# The sweep runner, looked up at call time so tests can replace it without Ray.
Runner = Callable[..., Any]


def _default_runner() -> Runner:
    from workers.ray_entry.sweep import run_sweep

    return run_sweep


def relative_to(path: str | None, root: Path) -> str | None:
    """``path`` relative to ``root`` when it lies inside it (an artifact name), else unchanged."""
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


class TrialEventForwarder:
    """``run_sweep``'s ``on_trial_event`` -> ``trial`` events, progress and log lines."""

    def __init__(self, reporter: SweepReporter, job_dir: Path, num_trials: int) -> None:
        self.reporter = reporter
        self.job_dir = job_dir
        self.num_trials = num_trials
        self.ended: Counter[str] = Counter()

    def sweep_start(self, spec: SweepSpec) -> None:
        trials = [{"trial_id": t.trial_id, "index": t.index, "config": t.overrides} for t in spec.trials()]
        self.reporter.emit(TRIAL_EVENT, {"event": "sweep_start", "trials": trials})
        self.reporter.log(f"sweep of {len(trials)} trials: {', '.join(spec.param_space)}; "
                          f"best by {spec.metric} ({spec.mode})")
        self._progress()

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("type"))
        data: dict[str, Any] = {"event": kind, "trial_id": event.get("trial_id"), "index": event.get("index")}
        if kind in ("trial_start", "trial_end"):
            data["config"] = event.get("config")
        for key in ("status", "epoch", "metrics", "final", "error"):
            if event.get(key) is not None:
                data[key] = event[key]
        if event.get("checkpoint") is not None:
            data["checkpoint"] = relative_to(event["checkpoint"], self.job_dir)
        self.reporter.emit(TRIAL_EVENT, data)
        if kind == "trial_start":
            self.reporter.log(f"{data['trial_id']} started: {_config_text(event.get('config'))}")
        elif kind == "trial_end":
            self.ended[str(event.get("status"))] += 1
            level = "warning" if event.get("status") == "failed" else "info"
            detail = f": {str(event['error'])[-300:]}" if event.get("error") else ""
            self.reporter.log(f"{data['trial_id']} {event.get('status')}{detail}", level=level)
            self._progress()

    def best_final(self, result: Any) -> None:
        """Tell the service the best trial's default-suite evaluation (``result``: a ``SweepResult``).

        Sent as a second ``trial_end`` of that trial, same status: the service keeps a trial's latest
        ``final``, so the best trial's row shows the default suite, its monitor numbers under
        ``"monitor"``. Not counted as one more finished trial.
        """
        best = next((t for t in result.trials if t["trial_id"] == result.best_trial_id), None)
        if best is None or result.best_final is None:
            return
        final = dict(result.best_final) | {"monitor": best.get("final")}
        data = {"event": "trial_end", "trial_id": best["trial_id"], "index": best.get("index"),
                "config": best.get("config"), "status": best["status"], "final": final}
        if best.get("checkpoint") is not None:
            data["checkpoint"] = relative_to(best["checkpoint"], self.job_dir)
        self.reporter.emit(TRIAL_EVENT, data)

    def _progress(self) -> None:
        done = sum(self.ended.values())
        self.reporter.progress(done, self.num_trials, force=True, phase="sweep", trials_done=done,
                               trials_total=self.num_trials)


def _config_text(config: Any) -> str:
    if not isinstance(config, Mapping):
        return "-"
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _link_or_copy(src: str, dst: str) -> None:
    # Hard links cost no space; a storage that refuses them (another filesystem) gets a copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_best_checkpoint(job_dir: Path, checkpoint: str | None) -> str | None:
    """Make ``job_dir/checkpoint`` the best trial's checkpoint: a directory of hard links to its
    files (a symlinked directory would not be listed as artifacts). Returns its artifact name, or
    None without a checkpoint."""
    clear_best_checkpoint(job_dir)
    if checkpoint is None:
        return None
    source = Path(checkpoint)
    source = source if source.is_absolute() else job_dir / source
    if not source.is_dir():
        return None
    shutil.copytree(source, job_dir / BEST_CHECKPOINT, copy_function=_link_or_copy)
    return BEST_CHECKPOINT


def clear_best_checkpoint(job_dir: Path) -> None:
    link = job_dir / BEST_CHECKPOINT
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)


def sweep_result(result: Any, job_dir: Path, num_trials: int) -> dict[str, Any]:
    """The job's final metrics from a ``SweepResult``: the best trial's default-suite evaluation on
    top, its own monitor evaluation (an upper bound) under ``best_monitor``."""
    trials = list(result.trials)
    best = next((t for t in trials if t["trial_id"] == result.best_trial_id), None)
    if best is None:
        counts = Counter(t["status"] for t in trials)
        errors = [f"{t['trial_id']}: {t['error']}" for t in trials if t.get("error")][:3]
        raise SweepFailed(
            f"no trial reported the metric {result.metric!r} ({dict(counts)})"
            + (f"; first errors: {' | '.join(errors)}" if errors else "")
        )
    if result.best_final is None:
        missing = f"the best trial {result.best_trial_id} was not evaluated with the default suite"
        raise SweepFailed(result.best_final_error or missing)
    return dict(result.best_final) | {
        "best_trial_id": result.best_trial_id,
        "best_checkpoint": relative_to(result.best_checkpoint, job_dir),
        "best_config": best.get("config"),
        "best_score": trial_score(best.get("metrics") or [], result.metric),
        "best_monitor": best.get("final"),
        "numbers": result.numbers,
        "metric": result.metric,
        "mode": result.mode,
        "num_trials": num_trials,
        "trials": dict(Counter(t["status"] for t in trials)),
        "seconds": round(float(result.seconds), 3),
    }


def run_sweep_job(
    spec: SweepSpec,
    job_dir: Path,
    reporter: SweepReporter,
    *,
    stop_event: threading.Event | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Run the sweep ``spec`` into ``job_dir``, reporting every trial
    through ``reporter``; returns the job's final metrics (see the module docstring).

    ``stop_event`` (or SIGINT/SIGTERM while the sweep runs on the main thread) cancels it: every
    trial stops and frees its resources, then ``SweepCancelled`` is raised. ``SweepFailed`` when
    no trial produced the metric or the best trial's default-suite evaluation failed.
    """
    if not isinstance(spec, SweepSpec):
        raise TypeError(f"run_sweep_job takes a SweepSpec, not {type(spec).__name__}")
    sweep = spec
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    clear_best_checkpoint(job_dir)  # an earlier attempt's best is not this attempt's
    trials = sweep.trials()
    forward = TrialEventForwarder(reporter, job_dir, len(trials))
    forward.sweep_start(sweep)
    run = runner or _default_runner()
    result = run(sweep, job_dir, on_trial_event=forward, stop_event=stop_event)
    if result.cancelled:
        raise SweepCancelled(f"the sweep was cancelled after {sum(forward.ended.values())} of {len(trials)} "
                             "trials ended")
    metrics = sweep_result(result, job_dir, len(trials))
    forward.best_final(result)
    linked = link_best_checkpoint(job_dir, metrics["best_checkpoint"])
    reporter.log(f"best trial {metrics['best_trial_id']}: {sweep.metric} = {metrics['best_score']} (last "
                 f"epoch); the default suite on {metrics.get('n')} points: union = {metrics.get('union')}"
                 + (f" (checkpoint: {metrics['best_checkpoint']}, also as {linked}/)" if linked else ""))
    return metrics


def sweep_kind(ctx: Any) -> dict[str, Any]:
    """The driver's entry for kind ``sweep`` (``JOB_KINDS.add("sweep", sweep_kind)``); ``ctx`` is
    the driver's ``JobContext``: ``job.work`` is the ``SweepSpec`` (the driver's one parse of the
    stored spec), ``out_dir``, ``reporter``."""
    spec = ctx.job.work
    if not isinstance(spec, SweepSpec):
        raise TypeError(f"a sweep job's work is a SweepSpec, not {type(spec).__name__}")
    try:
        return run_sweep_job(spec, ctx.out_dir, ctx.reporter)
    except SweepCancelled:
        # The sweep held SIGTERM while it stopped its trials; hand the signal back to the driver,
        # whose own handler ends the job as stopped (cancelled), not failed.
        signal.raise_signal(signal.SIGTERM)
        raise
