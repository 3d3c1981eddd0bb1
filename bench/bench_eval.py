"""The default evaluation suite against pyautoattack's APGD-CE + APGD-T, same model and points.

    .venv/bin/python -m bench.bench_eval                         # trains the subject, 200 points
    .venv/bin/python -m bench.bench_eval --checkpoint runs/eat --n 500 --repeats 3

The subject is the model of the evaluation issue: E-AT on mnist-5k with 3-step training attacks,
seed 0 (``--epochs``, default 10), trained here unless ``--checkpoint`` names one. Per norm, our
``standard`` suite and pyautoattack's ``run_standard_evaluation`` with ``attacks=["apgd-ce",
"apgd-t"]`` and its standard per-norm settings (what a user of the package would run) evaluate
the same first ``--n`` test points, alternately, ``--repeats`` times; the table keeps each side's
fastest run (the least disturbed on a shared machine) and checks that every repeat gave the same
flags. Printed: the accuracy gap per norm and union in percentage points (ours minus theirs; the
target is <= 1) and the time ratio ours / theirs, for the precision scheme the default
(``--precision auto``) resolves to on this machine (``fp32``, or ``bf16-screen+fp32`` where
bfloat16 is native: a bfloat16 screen, then the float32 suite on every point it left robust);
then ``standard+`` (``standard``, then pyautoattack's FAB-T and Square on the points it left
robust: full AutoAttack's composition) on the same points: its accuracies and its cost as a ratio
to ``standard`` (``--no-plus`` skips it).

Both evaluations are randomised (random starts), so one seed's gap is one draw. ``--seeds K``
also evaluates both with seeds 1 .. K-1 and prints, per norm and union, the range of robust
points each side gives over the K seeds: how far apart two draws of the *same* attack fall, the
scale against which a one-seed gap is read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workers import checkpoint
from workers.contract.spec import TrainSpec
from workers.datasets import load_tensors
from workers.evaluation import evaluate
from workers.evaluation.agreement import Agreement, agreement_with_autoattack
from workers.evaluation.result import union_flags
from workers.training.loop import run_training

NORMS = ("linf", "l2", "l1")


def train_subject(out: Path, epochs: int) -> None:
    steps = {f"attack.steps_{norm}": 3 for norm in NORMS}
    spec = TrainSpec(method="eat", epochs=epochs, seed=0, params=steps, eval_n=0, monitor_n=0, checks_n=0)
    print(f"training the subject: E-AT, 3-step attacks, {epochs} epochs, seed 0 -> {out}", flush=True)
    run_training(spec.resolve(), out)


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: dict[str, float],
            repeats: int, precision: str) -> Agreement:
    best: Agreement | None = None
    for r in range(repeats):
        run = agreement_with_autoattack(model, x, y, epsilons, precision=precision)
        for norm in epsilons:
            print(f"  repeat {r + 1}: {norm:4s} ours {run.ours_seconds[norm]:6.1f} s   "
                  f"pyautoattack {run.theirs_seconds[norm]:6.1f} s", flush=True)
        if best is None:
            best = run
            continue
        for norm in epsilons:
            same = np.array_equal(best.ours[norm], run.ours[norm]) and np.array_equal(best.theirs[norm],
                                                                                       run.theirs[norm])
            if not same:
                raise SystemExit(f"{norm}: a repeat gave different per-sample flags (non-deterministic)")
            best.ours_seconds[norm] = min(best.ours_seconds[norm], run.ours_seconds[norm])
            best.theirs_seconds[norm] = min(best.theirs_seconds[norm], run.theirs_seconds[norm])
    assert best is not None
    return best


def report(a: Agreement) -> None:
    ours, theirs, gap = a.accuracy("ours"), a.accuracy("theirs"), a.gap_points()
    print(f"\n{a.n} points, clean {100 * a.clean.mean():.1f} %, precision scheme {a.precision} "
          "(robust verdicts in float32)")
    print(f"{'':6s} {'ours':>7s} {'pyautoattack':>13s} {'gap (pts)':>10s} {'ours s':>8s} {'theirs s':>9s} "
          f"{'ratio':>6s}")
    for key in (*a.ours, "union"):
        secs = ""
        if key in a.ours_seconds:
            o, t = a.ours_seconds[key], a.theirs_seconds[key]
            secs = f"{o:8.1f} {t:9.1f} {o / t:6.2f}"
        print(f"{key:6s} {100 * ours[key]:6.1f}% {100 * theirs[key]:12.1f}% {gap[key]:+10.1f} {secs}")
    worst = max(gap.values())
    print(f"\nlargest gap (ours - pyautoattack): {worst:+.1f} points (target <= +1.0): "
          f"{'ok' if worst <= 1.0 else 'OVER'}")
    print(f"time ratio (ours / pyautoattack, all norms): {a.time_ratio():.2f}")


def plus_cost(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: dict[str, float],
              base: Agreement, precision: str) -> None:
    """``standard+`` on the same points: accuracy and seconds beside ``standard``'s."""
    print(f"\nstandard+ (standard, then FAB-T and Square on what it left robust), {base.n} points")
    print(f"{'':6s} {'standard':>9s} {'standard+':>10s} {'std s':>8s} {'std+ s':>8s} {'ratio':>6s}")
    flags: dict[str, np.ndarray] = {}
    total_plus = 0.0
    for norm, eps in epsilons.items():
        started = time.perf_counter()
        result = evaluate(model, (x, y), {norm: eps}, "standard+", n=None, precision=precision)
        seconds = time.perf_counter() - started
        total_plus += seconds
        flags[norm] = result.robust[norm]
        std, std_s = base.ours[norm], base.ours_seconds[norm]
        print(f"{norm:6s} {100 * std.mean():8.1f}% {100 * flags[norm].mean():9.1f}% "
              f"{std_s:8.1f} {seconds:8.1f} {seconds / std_s:6.2f}", flush=True)
    union = union_flags(base.clean, flags.values())
    ours_union = base.accuracy("ours")["union"]
    print(f"{'union':6s} {100 * ours_union:8.1f}% {100 * union.mean():9.1f}%")
    print(f"standard+ cost ratio (standard+ / standard, all norms): "
          f"{total_plus / sum(base.ours_seconds.values()):.2f}")


def seed_spread(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: dict[str, float],
                first: Agreement, seeds: int, precision: str) -> None:
    runs = [first]
    for seed in range(1, seeds):
        runs.append(agreement_with_autoattack(model, x, y, epsilons, seed=seed, precision=precision))
        print(f"  seed {seed}: ours {runs[-1].robust_counts('ours')}, "
              f"pyautoattack {runs[-1].robust_counts('theirs')}", flush=True)
    print(f"\nrobust points over seeds 0..{seeds - 1} (min-max; {first.n} points)")
    print(f"{'':6s} {'ours':>9s} {'pyautoattack':>13s} {'largest gap over seed pairs':>28s}")
    for key in (*first.ours, "union"):
        ours = [r.robust_counts("ours")[key] for r in runs]
        theirs = [r.robust_counts("theirs")[key] for r in runs]
        worst = max(o - t for o in ours for t in theirs)
        print(f"{key:6s} {min(ours):4d}-{max(ours):<4d} {min(theirs):8d}-{max(theirs):<4d} "
              f"{100 * worst / first.n:+27.1f} pts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: train the subject)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the subject when training it")
    parser.add_argument("--n", type=int, default=200, help="test points")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto",
                        help="auto (the default scheme) | fp32 | bf16 (a bfloat16 screen, then float32)")
    parser.add_argument("--no-plus", dest="plus", action="store_false", help="skip the standard+ cost")
    parser.add_argument("--seeds", type=int, default=1, help="also compare seeds 1..K-1 (the spread)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        source = args.checkpoint
        if source is None:
            source = Path(tmp) / "eat"
            train_subject(source, args.epochs)
        model, meta = checkpoint.load(source)
        x, y = load_tensors(meta["dataset"], "test", n=args.n)
        print(f"evaluating {source} on {len(x)} points, radii {meta['epsilons']}", flush=True)
        result = measure(model, x, y, meta["epsilons"], args.repeats, args.precision)
        if args.seeds > 1:
            seed_spread(model, x, y, meta["epsilons"], result, args.seeds, args.precision)
        if args.plus:
            plus_cost(model, x, y, meta["epsilons"], result, args.precision)
        report(result)


if __name__ == "__main__":
    main()
