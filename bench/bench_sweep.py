"""Sweep orchestration overhead: a sweep's wall time against its trials' own training time.

    .venv/bin/python -m bench.bench_sweep                          # 2x2 grid, nt, 2 epochs, 2 at once
    .venv/bin/python -m bench.bench_sweep --method at-linf --train-n 2048 --epochs 2
    .venv/bin/python -m bench.bench_sweep --workers 2 --concurrent 1  # trials on Ray Train

The same sweep runs twice on one local Ray (``--cpus``), with ``reuse_actors`` on and off. With one
worker per trial (the default) every trial runs the training loop inside its Tune trial; with
``--workers`` > 1 each trial starts a Ray Train TorchTrainer. Per run the table shows:

- wall: ``run_sweep`` from call to return (Ray already up), the best trial's default-suite
  evaluation included;
- train: the sum over trials of their own work: the epochs' seconds (``EpochReport.seconds``, the
  training loop alone) plus the trial's own evaluation (the monitor suite);
- span: the sum over trials of trial start -> trial end as the driver saw it;
- ideal: train / concurrency, the wall time if orchestration cost nothing;
- overhead: wall - ideal, and per trial: (span - train) / trials, what a trial costs beyond its
  own work once its actor is up: (Ray Train controller and workers start-up), per-epoch monitor
  evaluation, checkpoint writes, teardown;
- startup: call -> the first trial's start: Tune's start and the first trial actors' processes
  (a Python process importing torch, Ray Tune and the training code), once per sweep and
  concurrency slot (with ``reuse_actors`` off every trial starts a new actor, outside its span:
  all-in/trial counts those too);
- all-in/trial: (trials' part x concurrency - train) / trials, every slot-second not spent on a
  trial's own work, start-up included, shared out over the trials;
- best_eval: the best trial's default-suite evaluation (a Ray task, its start-up included), which
  runs once after every trial has ended;
- wall/train: (wall - best_eval) / train, the trials' part of the sweep against their work.

The last line gives the per-trial overhead and wall / train of the default run (``reuse_actors``
on), and the one-off start-up in them.

Its true baseline, in the same run and on the same Ray: the same trials as a plain Ray Tune sweep
(``plain_tune``): a function trainable calling the same training function (``run_training`` with
the trial's resolved spec, the loop's default-suite evaluation off, then the trial's own monitor
evaluation, ``evaluate_trial``), the same CPUs per trial and concurrency, ``Tuner.fit`` and nothing
else -- no channel, no recorder, no cancel polling, no best-trial evaluation, no service, no
database. ``ours / plain Tune`` compares the trials' part of our sweep (wall - best_eval) with it
(target <= 1.15), and our whole wall too (the best trial's default-suite evaluation, which plain
Tune does not do, counted as overhead). The plain sweep runs first, then ours with ``reuse_actors``
on and off. Timings on a shared machine are noisy (the line also gives
the load average before and after); ``--out FILE`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Any


def _sweep_spec(args: argparse.Namespace, reuse: bool) -> dict[str, Any]:
    base = {"kind": "train", "method": args.method, "dataset": "mnist-5k", "model": "small-cnn",
            "epochs": args.epochs, "train_n": args.train_n, "batch_size": args.batch_size,
            "monitor_n": args.monitor_n, "monitor_steps": 2, "eval_n": args.eval_n, "seed": 0,
            "resources": {"num_workers": args.workers, "cpus_per_worker": 1}}
    space = {"lr": {"grid": [0.01, 0.05]}, "seed": {"grid": [0, 1]}}
    return {"kind": "sweep", "base": base, "param_space": space, "metric": "union", "mode": "max",
            "max_concurrent_trials": args.concurrent, "reuse_actors": reuse}


def _measure(args: argparse.Namespace, reuse: bool, out_dir: str) -> dict[str, Any]:
    from workers.contract.sweep import parse_sweep_spec
    from workers.ray_entry.sweep import run_sweep

    seen: dict[str, dict[str, float]] = {}

    def on_event(event: dict[str, Any]) -> None:
        seen.setdefault(event["trial_id"], {})[event["type"]] = time.perf_counter()

    sweep = parse_sweep_spec(_sweep_spec(args, reuse))
    started = time.perf_counter()
    result = run_sweep(sweep, out_dir, on_trial_event=on_event, handle_signals=False)
    wall = time.perf_counter() - started
    # a trial's own work: its epochs (the training loop) and its own (monitor) evaluation
    train = sum(m["seconds"] for t in result.trials for m in t["metrics"])
    train += sum((t["final"] or {}).get("seconds", 0.0) for t in result.trials)
    best_eval = result.best_final_seconds
    if result.best_final_error:
        print(f"[reuse_actors={reuse}] the best trial's evaluation failed: {result.best_final_error[-600:]}")
    ended = [s for s in seen.values() if {"trial_start", "trial_end"} <= set(s)]
    span = sum(s["trial_end"] - s["trial_start"] for s in ended)
    startup = min((s["trial_start"] for s in seen.values() if "trial_start" in s), default=started) - started
    trials_part = wall - best_eval
    n = len(result.trials)
    for t in result.trials:
        if t["status"] != "succeeded":
            print(f"[reuse_actors={reuse}] {t['trial_id']} {t['status']}: {(t['error'] or '')[-600:]}")
    ideal = train / args.concurrent
    return {
        "reuse_actors": reuse, "trials": n, "statuses": sorted({t["status"] for t in result.trials}),
        "wall_s": wall, "train_s": train, "span_s": span, "ideal_s": ideal, "overhead_s": wall - ideal,
        "overhead_per_trial_s": (span - train) / n, "startup_s": startup,
        "all_in_per_trial_s": (trials_part * args.concurrent - train) / n, "best_eval_s": best_eval,
        "wall_over_train": trials_part / train if train else None,
        "wall_with_best_eval_over_train": wall / train if train else None,
        "runners": sorted({str(t["runner"]) for t in result.trials}),
    }


def _plain_trial(config: dict[str, Any]) -> None:
    """A plain Ray Tune function trainable: the trial's training and its own evaluation, reported."""
    from pathlib import Path

    import torch
    from ray import tune

    from workers.ray_entry.runtime import epoch_metrics
    from workers.ray_entry.sweep.evaluation import evaluate_trial
    from workers.training.callbacks import Callback
    from workers.training.loop import run_training
    from workers.training.runtime import LocalRuntime

    class Report(Callback):
        def on_epoch_end(self, report: Any) -> None:
            tune.report(epoch_metrics(report))

    torch.set_num_threads(config["threads"])
    trial, out = config["trial"], Path(config["trials_dir"]) / config["trial"]["trial_id"]
    spec = trial["spec"]
    # As our in-trial run: the loop's default-suite evaluation off, the trial's own evaluation after.
    run_training(spec.model_copy(update={"eval_n": 0}), out, callbacks=[Report()],
                 runtime=LocalRuntime("cpu"))
    tune.report(evaluate_trial(spec, out, device="cpu"))


def _measure_plain(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """The same trials as a plain Ray Tune sweep (``Tuner.fit``), sized as ``run_sweep`` sizes them."""
    import ray
    from ray import tune

    from workers.contract.sweep import parse_sweep_spec, plan_resources
    from workers.ray_entry.sweep.resources import trial_resources, trial_runner, trial_threads
    from workers.ray_entry.sweep.tuner import runnable_specs

    sweep = parse_sweep_spec(_sweep_spec(args, True))
    trials = sweep.expand()
    specs = runnable_specs(trials)
    plan = plan_resources(sweep.resources(), total_cpus=ray.cluster_resources().get("CPU", 0.0),
                          total_gpus=0.0, max_concurrent_trials=sweep.max_concurrent_trials)
    if trial_runner(plan) != "in-trial":
        raise SystemExit("the plain Tune baseline covers one-worker trials only (--workers 1)")
    tuner = tune.Tuner(
        tune.with_resources(_plain_trial, trial_resources(plan)),
        param_space={"trial": tune.grid_search([{"trial_id": t.trial_id, "spec": specs[t.trial_id]}
                                                for t in trials]),
                     "trials_dir": os.path.join(out_dir, "trials"), "threads": trial_threads(plan)},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.max_concurrent_trials, reuse_actors=True,
                                    trial_name_creator=lambda t: t.config["trial"]["trial_id"],
                                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"]),
        run_config=tune.RunConfig(storage_path=os.path.join(out_dir, "tune"), name="plain", verbose=0),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    errors = [str(r.error)[-600:] for r in grid if r.error is not None]
    for e in errors:
        print(f"[plain Tune] a trial failed: {e}")
    return {"wall_s": wall, "trials": len(grid), "failed": len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="nt")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--monitor-n", type=int, default=32)
    parser.add_argument("--eval-n", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial")
    parser.add_argument("--concurrent", type=int, default=2, help="max concurrent trials")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()

    import ray

    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    rows = []
    try:
        plain = _measure_plain(args, os.path.join(tmp, "plain-tune"))
        for reuse in (True, False):
            rows.append(_measure(args, reuse, os.path.join(tmp, f"sweep-reuse-{reuse}")))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{args.method}, {args.epochs} epochs x {args.train_n} points, 4 trials, "
          f"{args.concurrent} at once, {args.workers} worker(s) each, {args.cpus} CPUs")
    header = ("reuse_actors", "wall_s", "train_s", "span_s", "ideal_s", "overhead_s", "overhead_per_trial_s",
              "startup_s", "all_in_per_trial_s", "best_eval_s", "wall_over_train")
    print(" | ".join(f"{h:>{len(h)}}" for h in header))
    for row in rows:
        cells = (f"{row[h]:>{len(h)}.2f}" if isinstance(row[h], float) else f"{row[h]!s:>{len(h)}}"
                 for h in header)
        print(" | ".join(cells))
    default = rows[0]  # reuse_actors on: the sweep spec's default
    ours_trials = default["wall_s"] - default["best_eval_s"]
    print(f"plain Ray Tune, same trials: wall {plain['wall_s']:.2f} s ({plain['trials']} trials, "
          f"{plain['failed']} failed); ours / plain Tune = {ours_trials / plain['wall_s']:.2f} "
          f"(trials' part, target <= 1.15), {default['wall_s'] / plain['wall_s']:.2f} with the best trial's "
          f"default-suite evaluation")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"ours": rows, "plain_tune": plain,
                       "ours_over_plain": ours_trials / plain["wall_s"],
                       "ours_with_best_eval_over_plain": default["wall_s"] / plain["wall_s"]}, f, indent=2)
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"trials run {', '.join(default['runners'])}: per-trial overhead "
          f"{default['overhead_per_trial_s']:.2f} s (target <= 3; {default['all_in_per_trial_s']:.2f} s "
          f"all-in, the {default['startup_s']:.1f} s start-up included); wall / sum(trial training) "
          f"{default['wall_over_train']:.2f} (target <= 1.3; {default['wall_with_best_eval_over_train']:.2f} "
          f"counting the best trial's {default['best_eval_s']:.1f} s default-suite evaluation as overhead)")


if __name__ == "__main__":
    main()
