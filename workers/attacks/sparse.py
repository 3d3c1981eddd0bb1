"""Sparse random search: a black-box attack on the corners of the l_1 (and l_2) ball inside the box.

Why it exists: on MNIST-like inputs, models trained against l_inf keep APGD and FAB from converging
on l_1. On the reproduction's AT-l_inf model, 10,000 iterations of AutoAttack's gradient-based
attacks still left 16 of the 29 points `standard+` called l_1-robust, where this search with
10,000 queries fooled 28 of them in 15 s (``docs/evaluation.md``, "Sparse search").

The search follows Sparse-RS (Croce, Singh, Hein, "Sparse-RS: a versatile framework for
query-efficient sparse black-box adversarial attacks", AAAI 2022): a candidate changes ``k``
coordinates; each query replaces a few of them with other randomly drawn coordinates, and the
candidate is kept when it lowers the margin loss (true-class logit minus the largest other one).
The number of coordinates swapped shrinks over the queries (``swap_count``).

Budget without projection: every input coordinate lies in [0, 1] and a changed coordinate goes to
the farther end of the box (0 or 1, a change of at most 1), so ``k`` changed coordinates move an
input by at most ``k`` in l_1 and ``sqrt(k)`` in l_2. ``sparse_budget`` picks the largest ``k``
inside the ball: ``floor(eps)`` for l_1, ``floor(eps ** 2)`` for l_2. Under l_inf a change to the
box's end leaves any radius below 1, so the search has nothing to offer there (``k`` = 0 for
eps < 1 in l_1 / l_2 as well: the input is returned as it is).

It only evaluates the model (forward passes, no gradients), so gradient masking cannot stop it.
Draws come from a CPU generator seeded with ``seed`` (the same numbers on every device). Returns,
per point, a misclassified candidate where one was found, else the clean input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from workers.attacks.common import margin

INITIAL_SWAP_SHARE = 0.5  # of the k coordinates, replaced per query at the start
_ROUNDING = 1e-9  # eps = 10 given as 9.999999999 still allows 10 coordinates


def sparse_budget(norm: str, eps: float, d: int | None = None) -> int:
    """The largest number of coordinates a change to the box's ends may touch inside the ``norm``
    ball of radius ``eps`` (0: the search cannot move the input); ``d``: the input's size, a cap."""
    if norm == "l1":
        k = math.floor(eps + _ROUNDING)
    elif norm == "l2":
        k = math.floor(eps * eps + _ROUNDING)
    else:
        k = 0
    return max(0, k if d is None else min(d, k))


def swap_count(k: int, query: int, queries: int) -> int:
    """Coordinates replaced at ``query`` (0-based) of ``queries``: half of ``k`` at first, shrinking
    quadratically to one, so the search moves widely early and refines late."""
    share = INITIAL_SWAP_SHARE * (1.0 - query / queries) ** 2
    return max(1, min(k, round(share * k)))


def _compose(flat_x: Tensor, far: Tensor, positions: Tensor) -> Tensor:
    out = flat_x.clone()
    out.scatter_(1, positions, far.gather(1, positions))
    return out


@torch.no_grad()
def _search(model: nn.Module, x: Tensor, y: Tensor, k: int, queries: int,
            generator: torch.Generator) -> Tensor:
    n, d = len(x), x[0].numel()
    flat = x.flatten(1)
    far = (flat < 0.5).to(flat.dtype)  # the farther end of [0, 1] for every coordinate
    x_adv = x.clone()

    def draw(high: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, high, shape, generator=generator).to(x.device)

    positions = draw(d, (n, k))
    candidate = _compose(flat, far, positions)
    logits = model(candidate.view_as(x))
    best = -margin(logits, y)  # true-class logit minus the largest other: lower is better
    fooled = logits.argmax(dim=1) != y
    x_adv[fooled] = candidate[fooled].view_as(x[fooled])
    active = torch.nonzero(~fooled).squeeze(1)
    for query in range(queries):
        if len(active) == 0:
            break
        m = swap_count(k, query, queries)
        slots = torch.rand(len(active), k, generator=generator).argsort(dim=1)[:, :m].to(x.device)
        proposal = positions[active].scatter(1, slots, draw(d, (len(active), m)))
        candidate = _compose(flat[active], far[active], proposal)
        logits = model(candidate.view(-1, *x.shape[1:]))
        loss = -margin(logits, y[active])
        better = loss < best[active]
        positions[active[better]] = proposal[better]
        best[active[better]] = loss[better]
        now_fooled = logits.argmax(dim=1) != y[active]
        x_adv[active[now_fooled]] = candidate[now_fooled].view(-1, *x.shape[1:])
        active = active[~now_fooled]
    return x_adv


def sparse_search(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, *, queries: int,
                  seed: int = 0, batch_size: int = 256) -> Tensor:
    """Sparse random search against ``model`` (eval mode, on ``x``'s device) in the ``norm`` ball of
    radius ``eps``: per point a misclassified input within the ball and the box, or ``x`` itself."""
    if queries < 1:
        raise ValueError(f"the sparse search needs at least one query, got {queries}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    k = sparse_budget(norm, eps, x[0].numel()) if len(x) else 0
    if k == 0:
        return x.clone()
    generator = torch.Generator().manual_seed(seed)
    parts = [_search(model, x[i:i + batch_size], y[i:i + batch_size], k, queries, generator)
             for i in range(0, len(x), batch_size)]
    return torch.cat(parts)
