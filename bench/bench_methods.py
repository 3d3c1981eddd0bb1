"""Seconds per training step of every method, as a multiple of one forward+backward pass.

    .venv/bin/python bench/bench_methods.py                      # small-cnn, mnist-5k, batch 128
    .venv/bin/python bench/bench_methods.py --model preact-resnet18 --dataset cifar10 --batch-size 64

One step = what the training loop does per batch: ``compute_loss``, ``zero_grad``, ``backward``,
the optimiser step and ``after_step``. The unit ("pass") is one forward + cross-entropy + backward
of the same model on the same batch, measured in the same run, so the ratio is comparable across
machines. "ideal" is the number of passes a method needs in principle (an attack iteration is a
forward+backward; a no-grad forward counts what it measures here, ~1/3 on a GPU, more for a small
CNN on a CPU), so ``ratio / ideal`` near 1 means no overhead.
The data are the dataset's first training points when available locally, else uniform noise.
On a CPU with one torch thread the default clock is the process CPU time, which other processes
competing for the cores barely disturb; ``--clock wall`` measures elapsed time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workers.contract import catalog
from workers.methods import MethodContext, build_method
from workers.models import build_model
from workers.training.optim import build_optimizer


def _steps(p: dict[str, Any], norm: str) -> int:
    return int(p[f"attack.steps_{norm}"])


def _all_steps(p: dict[str, Any]) -> int:
    return sum(_steps(p, n) for n in ("linf", "l2", "l1"))


# method -> (params, f = cost of a no-grad forward in passes) -> ideal passes per step
IDEAL: dict[str, Callable[[dict[str, Any], float], float]] = {
    "nt": lambda p, f: 1,
    "at-linf": lambda p, f: _steps(p, "linf") + 1,
    "at-l2": lambda p, f: _steps(p, "l2") + 1,
    "at-l1": lambda p, f: _steps(p, "l1") + 1,
    "sat": lambda p, f: _all_steps(p) / 3 + 1,
    "avg": lambda p, f: _all_steps(p) + 3,
    # + the per-norm robust-accuracy forwards (3 no-grad forwards)
    "max": lambda p, f: _all_steps(p) + 1 + 3 * f,
    # per iteration: one forward-backward + three candidate forwards
    "msd": lambda p, f: p["msd.steps"] * (1 + 3 * f) + 1,
    "eat": lambda p, f: sum(_steps(p, n.strip()) for n in p["eat.norms"].split(",")) / 2 + 1,
    # two attacks + three forward-backwards (+ GP's natural step, + TRADES' clean forward)
    "ramp": lambda p, f: (_steps(p, p["ramp.q"]) + _steps(p, p["ramp.r"]) + 3
                          + bool(p.get("gp.enabled")) + (p.get("ramp.trades_beta", 0) > 0)),
    # inner steps + clean forward (no grad) + the two-forward outer loss
    "trades": lambda p, f: p["trades.steps"] + f + 2,
}


def _data(
    dataset: str, batch: int, shape: tuple[int, int, int], classes: int
) -> tuple[torch.Tensor, torch.Tensor, str]:
    from workers.datasets import load_tensors

    try:
        x, y = load_tensors(dataset, "train", n=batch)
        if x.shape[0] == batch:
            return x, y, f"{dataset} train[:{batch}]"
    except (FileNotFoundError, ValueError) as exc:
        print(f"note: {dataset} not available locally ({exc}); timing on uniform noise", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g), "noise"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _median_seconds(fn: Callable[[], None], reps: int, device: torch.device, clock: str) -> float:
    now = CLOCKS[clock]
    fn()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(reps):
        _sync(device)
        start = now()
        fn()
        _sync(device)
        times.append(now() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k", choices=sorted(catalog.DATASETS))
    ap.add_argument("--model", default=None, help="default: the dataset's default model")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method (median)")
    ap.add_argument("--pass-reps", type=int, default=20, help="timed reference passes (median)")
    ap.add_argument("--methods", default=",".join(catalog.METHODS) + ",ramp-nogp")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                    help="wall time, or process CPU time (robust to other load on a shared CPU box; "
                         "default: cpu for CPU devices with 1 thread, else wall)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    info = catalog.DATASETS[args.dataset]
    classes = info.num_classes or 10
    model_name = args.model or info.default_model
    x, y, source = _data(args.dataset, args.batch_size, info.shape, classes)
    x, y = x.to(device), y.to(device)
    model = build_model(model_name, num_classes=classes, in_channels=info.shape[0], input_size=info.shape[1:])
    model.to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}

    def one_pass() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def one_forward() -> None:
        with torch.no_grad():
            model(x)

    model.train()
    unit = _median_seconds(one_pass, args.pass_reps, device, args.clock)
    model.eval()
    forward = _median_seconds(one_forward, args.pass_reps, device, args.clock)
    print(f"{model_name} on {source}, batch {args.batch_size}, {device}, {args.threads} thread(s): "
          f"one forward+backward pass = {unit * 1e3:.1f} ms ({args.clock} clock); "
          f"a no-grad eval forward = {forward / unit:.2f} passes")
    print(f"{'method':<11} {'s/step':>8} {'passes':>8} {'ideal':>7} {'ratio/ideal':>12}")

    rows = []
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        method_name, overrides = (name, {})
        if name == "ramp-nogp":
            method_name, overrides = "ramp", {"gp.enabled": False}
        params = catalog.param_defaults(method_name, args.dataset, finetune=False) | overrides
        model.load_state_dict(init)
        ctx = MethodContext(epsilons=dict(info.epsilons), params=params, num_classes=classes,
                            momentum=0.9, weight_decay=info.weight_decay)
        method = build_method(method_name, ctx)
        opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=info.weight_decay)
        method.on_epoch_start(model, 0)

        def step(method=method, opt=opt) -> None:
            model.train()
            out = method.compute_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            method.after_step(model, x, y, 0.01)

        seconds = _median_seconds(step, args.steps, device, args.clock)
        ideal = float(IDEAL[method_name](params, forward / unit))
        row = {"method": name, "seconds_per_step": seconds, "passes": seconds / unit, "ideal_passes": ideal,
               "overhead": seconds / unit / ideal}
        rows.append(row)
        print(f"{name:<11} {seconds:8.3f} {seconds / unit:8.1f} {ideal:7.1f} {seconds / unit / ideal:12.2f}")

    if args.json:
        summary = {
            "model": model_name, "dataset": args.dataset, "source": source, "batch_size": args.batch_size,
            "device": str(device), "threads": args.threads, "clock": args.clock, "pass_seconds": unit,
            "forward_passes": forward / unit, "rows": rows,
        }
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return rows


if __name__ == "__main__":
    main()
