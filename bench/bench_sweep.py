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
on), and the one-off start-up in them. Timings on a shared machine are noisy (the line also gives
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
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    default = rows[0]  # reuse_actors on: the sweep spec's default
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"trials run {', '.join(default['runners'])}: per-trial overhead "
          f"{default['overhead_per_trial_s']:.2f} s (target <= 3; {default['all_in_per_trial_s']:.2f} s "
          f"all-in, the {default['startup_s']:.1f} s start-up included); wall / sum(trial training) "
          f"{default['wall_over_train']:.2f} (target <= 1.3; {default['wall_with_best_eval_over_train']:.2f} "
          f"counting the best trial's {default['best_eval_s']:.1f} s default-suite evaluation as overhead)")


if __name__ == "__main__":
    main()
