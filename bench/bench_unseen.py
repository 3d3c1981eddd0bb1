"""Seconds per point of the unseen adversaries and of the ``unseen`` suite, against the default
(``standard``) suite measured in the same run on the same model and points.

    .venv/bin/python -m bench.bench_unseen                    # small-cnn on mnist-5k, 64 points
    .venv/bin/python -m bench.bench_unseen --n 128 --steps 200 --threads 1

The model is briefly trained first (``--train-steps``) so both suites face a model that gets
most points right: attacks run only on clean-correct points, and an untrained model would make
both cheap. Each attack runs on all ``--n`` points with the suite's budget for the images' size;
the suites run through ``evaluate`` (the ``unseen`` suite includes the corruptions). Printed: each
attack's seconds per point and accuracy, the unseen suite's and the standard suite's seconds per
point and their ratio. The ratio is the number to compare across machines.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from workers.attacks.unseen import unseen_attack
from workers.contract import catalog
from workers.contract.unseen import UNSEEN_ATTACKS, UNSEEN_STEPS, budgets_for
from workers.datasets import load_tensors
from workers.evaluation import evaluate
from workers.models import build_model


def _trained(steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    x, y = load_tensors("mnist-5k", "train", n=2048)
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=28)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (128,), generator=generator)
        optimiser.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimiser.step()
    model.eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="test points")
    parser.add_argument("--steps", type=int, default=UNSEEN_STEPS, help="iterations of every unseen attack")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _trained(args.train_steps)
    x, y = load_tensors("mnist-5k", "test", n=args.n)
    budgets = budgets_for(*x.shape[-2:])
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"small-cnn on {args.n} mnist-5k test points, clean accuracy {clean:.3f}, {args.steps} steps")
    print(f"{'attack':10s} {'eps':>8s} {'s/point':>9s} {'accuracy':>9s}")
    for name in UNSEEN_ATTACKS:
        started = time.perf_counter()
        x_adv = unseen_attack(name, model, x, y, budgets[name], steps=args.steps,
                              generator=torch.Generator().manual_seed(0)).x_adv
        seconds = time.perf_counter() - started
        with torch.no_grad():
            accuracy = float((model(x_adv).argmax(1) == y).float().mean())
        print(f"{name:10s} {budgets[name]:8.4g} {seconds / args.n:9.4f} {accuracy:9.3f}")
    unseen = evaluate(model, (x, y), {}, "unseen", n=None, steps=args.steps)
    standard = evaluate(model, (x, y), catalog.DATASETS["mnist-5k"].epsilons, catalog.DEFAULT_SUITE, n=None,
                        precision="fp32")
    per_point = {"unseen": unseen.seconds / args.n, "standard": standard.seconds / args.n}
    print(f"unseen suite: {per_point['unseen']:.4f} s/point (union {unseen.metrics()['unseen_union']:.3f}, "
          f"corruptions included)")
    print(f"standard suite (baseline, fp32): {per_point['standard']:.4f} s/point "
          f"(union {standard.metrics()['union']:.3f})")
    print(f"ratio unseen / standard: {per_point['unseen'] / per_point['standard']:.2f}")


if __name__ == "__main__":
    main()
