"""Seconds per training step of each method, per attack precision and model layout, as a ratio to
float32 eager, on PreAct ResNet-18 (CIFAR-sized inputs) and small-cnn in one run.

    .venv/bin/python bench/bench_methods.py       # both models, 5 methods, 2 layouts (docs/performance.md)
    .venv/bin/python bench/bench_methods.py --attack-steps 0 --rounds 3 --layouts eager,channels-last,compile

A *setting* is a training precision (``TrainSpec.train_precision``: the arithmetic of the inner
maximisation, on a reduced-precision twin of the model) and a layout of the float32 model
(``eager``, ``channels-last``, ``compile``: ``TrainSpec.channels_last`` / ``TrainSpec.compile``).
Reduced precisions the device does not multiply natively are skipped unless named in
``--precisions`` (emulated bfloat16 on an AVX2 CPU was 8-35x slower here, not faster). Every
(setting, method) pair takes one warm-up step (compilation, allocations), then ``--rounds``
timed steps, the rounds interleaved over all pairs so that load drifting on a shared machine hits
every setting alike: the ratios within one run are the result, not the absolute seconds. By
default the attacks run ``--attack-steps 3`` iterations per norm instead of the recipe's 10 to
keep the run short (aimed at ~5 minutes on an idle 2-core box; a loaded one takes far longer);
``--attack-steps 0`` times the recipe (the attack's share of a step, and so any gain of a
reduced-precision attack, is then larger). The last line is
``ramp speed-up vs float32 eager: N.NN (<setting>)``: the fastest setting for RAMP (with GP, the
from-scratch default) on PreAct ResNet-18.

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
from workers.evaluation.precision import native_bf16
from workers.methods import Method, MethodContext, build_method
from workers.models import build_model
from workers.models.compiled import fast_model
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


def _seconds(fn: Callable[[], None], device: torch.device, clock: str) -> float:
    now = CLOCKS[clock]
    _sync(device)
    start = now()
    fn()
    _sync(device)
    return now() - start


def _median_seconds(fn: Callable[[], None], reps: int, device: torch.device, clock: str) -> float:
    fn()  # warm-up (allocations, lazy init)
    return statistics.median(_seconds(fn, device, clock) for _ in range(reps))


LAYOUTS = ("eager", "channels-last", "compile")
REFERENCE = ("fp32", "eager")
# model -> (dataset it is timed on, batch size)
MODELS: dict[str, tuple[str, int]] = {"small-cnn": ("mnist-5k", 128), "preact-resnet18": ("cifar10", 32)}


def native_precisions(device: torch.device) -> list[str]:
    """The reduced precisions ``device`` multiplies in hardware (the ones worth timing by default)."""
    out = ["bf16"] if native_bf16(device) else []
    if device.type == "cuda" or (device.type == "cpu" and getattr(torch.cpu, "_is_amx_fp16_supported",
                                                                   lambda: False)()):
        out.append("fp16")
    return out


def _params(method: str, dataset: str, attack_steps: int) -> dict[str, Any]:
    params = catalog.param_defaults(method, dataset, finetune=False)
    if attack_steps > 0:
        for key in ("attack.steps_linf", "attack.steps_l2", "attack.steps_l1", "msd.steps", "trades.steps"):
            if key in params:
                params[key] = attack_steps
    return params


class _Pair:
    """One (setting, method): its model, optimiser and method, stepping as the training loop does."""

    def __init__(self, model: torch.nn.Module, method: Method, x: torch.Tensor, y: torch.Tensor,
                 weight_decay: float) -> None:
        self.model, self.method, self.x, self.y = model, method, x, y
        self.opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=weight_decay)
        method.on_epoch_start(model, 0)
        self.times: list[float] = []

    def step(self) -> None:
        self.model.train()
        out = self.method.compute_loss(self.model, self.x, self.y)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        self.method.after_step(self.model, self.x, self.y, 0.01)


def bench_model(model_name: str, args: argparse.Namespace, device: torch.device,
                settings: list[tuple[str, str]], methods: list[str]) -> list[dict[str, Any]]:
    dataset, batch = MODELS.get(model_name, (args.dataset, args.batch_size))
    info = catalog.DATASETS[dataset]
    classes = info.num_classes or 10
    x, y, source = _data(dataset, batch, info.shape, classes)
    x, y = x.to(device), y.to(device)
    torch.manual_seed(0)
    base = build_model(model_name, num_classes=classes, in_channels=info.shape[0], input_size=info.shape[1:])
    base.to(device)
    init = {k: v.clone() for k, v in base.state_dict().items()}

    def one_pass() -> None:
        base.zero_grad(set_to_none=True)
        F.cross_entropy(base(x), y).backward()

    def one_forward() -> None:
        with torch.no_grad():
            base(x)

    base.train()
    unit = _median_seconds(one_pass, args.pass_reps, device, args.clock)
    base.eval()
    forward = _median_seconds(one_forward, args.pass_reps, device, args.clock) / unit
    steps = (f"{args.attack_steps} attack steps per norm" if args.attack_steps > 0
             else "the recipe's attack steps")
    print(f"\n{model_name} on {source}, batch {batch}, {device}, {args.threads} thread(s), {steps}: one "
          f"forward+backward pass = {unit * 1e3:.1f} ms ({args.clock} clock)", flush=True)

    pairs: dict[tuple[str, str, str], _Pair] = {}
    for precision, layout in settings:
        model = build_model(model_name, num_classes=classes, in_channels=info.shape[0],
                            input_size=info.shape[1:]).to(device)
        model.load_state_dict(init)
        model = fast_model(model, channels_last=layout == "channels-last", compile=layout == "compile")
        for name in methods:
            params = _params(name, dataset, args.attack_steps)
            ctx = MethodContext(epsilons=dict(info.epsilons), params=params, num_classes=classes,
                                momentum=0.9, weight_decay=info.weight_decay, train_precision=precision)
            pairs[(precision, layout, name)] = _Pair(model, build_method(name, ctx), x, y, info.weight_decay)
    for _ in range(args.warmup):  # compilation, allocations, oneDNN primitives, the twin's copy
        for pair in pairs.values():
            pair.step()
    for _ in range(args.rounds):
        for pair in pairs.values():
            pair.times.append(_seconds(pair.step, device, args.clock))

    rows = []
    print(f"{'method':<10} {'setting':<20} {'s/step':>8} {'passes':>7} {'ideal':>6} {'vs fp32 eager':>14}")
    for name in methods:
        reference = statistics.median(pairs[(*REFERENCE, name)].times)
        ideal = float(IDEAL[name](_params(name, dataset, args.attack_steps), forward))
        for precision, layout in settings:
            seconds = statistics.median(pairs[(precision, layout, name)].times)
            row = {"model": model_name, "method": name, "precision": precision, "layout": layout,
                   "seconds_per_step": seconds, "passes": seconds / unit, "ideal_passes": ideal,
                   "speedup": reference / seconds, "times": pairs[(precision, layout, name)].times}
            rows.append(row)
            setting = f"{precision} {layout}"
            print(f"{name:<10} {setting:<20} {seconds:8.3f} {seconds / unit:7.1f} {ideal:6.1f} "
                  f"{reference / seconds:13.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = "; ".join(f"{m}: {d}, batch {b}" for m, (d, b) in MODELS.items())
    ap.add_argument("--models", default="small-cnn,preact-resnet18",
                    help=f"models, comma-separated ({known}; others: --dataset, --batch-size)")
    ap.add_argument("--dataset", default="cifar10", choices=sorted(catalog.DATASETS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--methods", default="nt,at-linf,eat,max,ramp")
    ap.add_argument("--precisions", default=None,
                    help="training precisions to time (default: fp32 and those native on the device)")
    ap.add_argument("--layouts", default="eager,channels-last", help=f"of {', '.join(LAYOUTS)}")
    ap.add_argument("--attack-steps", type=int, default=3,
                    help="attack iterations per norm (0: the recipe's)")
    ap.add_argument("--rounds", type=int, default=2, help="timed steps per (setting, method), interleaved")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per (setting, method) first")
    ap.add_argument("--pass-reps", type=int, default=5, help="timed reference passes (median)")
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
    device = torch.device(args.device)

    native = native_precisions(device)
    if args.precisions is None:
        precisions = ["fp32", *native]
        skipped = [p for p in catalog.TRAIN_PRECISIONS if p not in ("auto", "fp32") and p not in native]
        if skipped:
            print(f"not timed: {', '.join(skipped)} (not native on this {device.type}: emulated, slower; "
                  "--precisions to time them anyway)")
    else:
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        precisions = ["fp32"] + [p for p in precisions if p != "fp32"]
    named = [lay.strip() for lay in args.layouts.split(",") if lay.strip()]
    layouts = ["eager"] + [lay for lay in named if lay != "eager"]
    bad = [lay for lay in layouts if lay not in LAYOUTS]
    bad += [p for p in precisions if p not in catalog.TRAIN_PRECISIONS or p == "auto"]
    if bad:
        ap.error(f"unknown layout or precision: {', '.join(bad)}")
    settings = [(p, lay) for p in precisions for lay in layouts]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "ramp" not in methods:
        methods.append("ramp")

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for model_name in models:
        rows += bench_model(model_name, args, device, settings, methods)
    headline_model = "preact-resnet18" if "preact-resnet18" in models else models[-1]
    ramp = [r for r in rows if r["model"] == headline_model and r["method"] == "ramp"]
    best = max(ramp, key=lambda r: r["speedup"])
    print(f"\n({time.perf_counter() - started:.0f} s wall; {headline_model})")
    if args.json:
        summary = {"device": str(device), "threads": args.threads, "clock": args.clock,
                   "attack_steps": args.attack_steps, "rounds": args.rounds, "warmup": args.warmup,
                   "rows": rows}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"ramp speed-up vs float32 eager: {best['speedup']:.2f} ({best['precision']} {best['layout']})")
    return rows


if __name__ == "__main__":
    main()
