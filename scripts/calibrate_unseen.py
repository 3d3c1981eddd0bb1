"""Derive the MNIST-like budgets of the unseen adversaries (Kang et al. calibrated only CIFAR-10
and ImageNet-100).

Rule: train an l_inf-AT small CNN on mnist-5k (PGD, eps 0.3), then for each attack walk a
doubling ladder of sizes and take the largest at which the model keeps at least half its clean
accuracy -- the "about half" point of docs/evaluation.md, "Unseen adversaries". A short run by
design (under 2 CPU minutes, one thread): a small-cnn of 16 / 32 channels, 2,000 training points,
3 epochs of 3-step PGD (Adam, lr 1e-3), 100 test points and 20 attack iterations per size,
bisection over the ladder. The printed table is what ``workers/contract/unseen.py`` records for ``mnist``.

    PYTHONPATH=. python scripts/calibrate_unseen.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from workers.attacks.pgd import pgd
from workers.attacks.unseen import unseen_attack
from workers.contract.unseen import UNSEEN_ATTACKS
from workers.datasets import load_tensors
from workers.models import build_model

LADDERS: dict[str, list[float]] = {
    "jpeg-linf": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
    "jpeg-l1": [4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0],
    "fog": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
    "snow": [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0],
    "gabor": [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6],
    "elastic": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0],
}
TRAIN_POINTS, EPOCHS, BATCH = 2000, 3, 100
TEST_POINTS, STEPS = 100, 20
LINF_EPS, PGD_STEPS = 0.3, 3
MODEL_ARGS = {"channels": [16, 32], "hidden": 128}


def train_linf_at() -> torch.nn.Module:
    torch.manual_seed(0)
    x, y = load_tensors("mnist-5k", "train", TRAIN_POINTS)
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=28, **MODEL_ARGS)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(EPOCHS):
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            index = order[start:start + BATCH]
            x_adv = pgd(model, x[index], y[index], "linf", LINF_EPS, PGD_STEPS).x_adv
            model.train()
            optimiser.zero_grad()
            F.cross_entropy(model(x_adv), y[index]).backward()
            optimiser.step()
    model.eval()
    return model


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    torch.set_num_threads(1)  # on a shared box more threads only spin
    started = time.process_time()
    model = train_linf_at()
    x, y = load_tensors("mnist-5k", "test", TEST_POINTS)
    clean = accuracy(model, x, y)
    pgd_acc = accuracy(model, pgd(model, x, y, "linf", LINF_EPS, 20).x_adv, y)
    print(f"l_inf-AT small CNN: clean {clean:.2f}, PGD-20 l_inf {LINF_EPS} {pgd_acc:.2f} "
          f"(CPU seconds so far: {time.process_time() - started:.0f})", flush=True)
    for name in UNSEEN_ATTACKS:
        ladder, seen = LADDERS[name], {}
        low, high = -1, len(ladder)  # invariant: ladder[low] keeps >= half (or none), ladder[high] not
        while high - low > 1:
            mid = (low + high) // 2
            x_adv = unseen_attack(name, model, x, y, ladder[mid], steps=STEPS,
                                  generator=torch.Generator().manual_seed(0)).x_adv
            seen[ladder[mid]] = accuracy(model, x_adv, y)
            low, high = (mid, high) if seen[ladder[mid]] >= clean / 2 else (low, mid)
        chosen = ladder[max(low, 0)]
        tried = ", ".join(f"{e:g}: {a:.2f}" for e, a in sorted(seen.items()))
        print(f"{name:10s} budget {chosen:g}   (size: accuracy  {tried})", flush=True)
    print(f"CPU seconds: {time.process_time() - started:.0f}")


if __name__ == "__main__":
    main()
