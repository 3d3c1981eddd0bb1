"""Euclidean projections onto the threat models' balls and their intersection with the [0,1] box.

All functions act on a perturbation ``delta`` of an input ``x`` (both (N, ...)), batched over the
first dimension, with ``eps`` a float or an (N,) tensor, and never read a value on the host.

Ball ∩ box, per norm (what ``project`` does):
- l_inf: clamp to the ball, then to the box. Both sets are boxes, so this is exact.
- l_2: the exact projection onto the intersection, not AutoAttack's "project to the ball, then
  clip to the box" (which is feasible but not the nearest point: clipping wastes radius the other
  coordinates could use). KKT gives d = clip(t * v, -x, 1 - x) for the largest t in [0, 1] with
  ||d||_2 <= eps. It is worth its cost: 10-iteration APGD-l_2 on an MNIST small-cnn (eps 2)
  reached mean CE 3.83 / robust accuracy 31.6% with it, 3.57 / 34.0% with ball-then-clip, for
  ~20% more time per iteration on that (cheap) model; the gap closes at 100 iterations.
- l_1: the exact projection ("Mind the box", Croce & Hein 2021): d_i = sign(v_i) *
  min(max(|v_i| - tau, 0), u_i) with u_i the room to the box edge in the direction of v_i and
  tau >= 0 the root of a piecewise-linear decreasing function.
Both scalars are found with a fixed number of vectorised rounds (no host synchronisation, no
sort: sorting the breakpoints of a 128 x 784 batch costs ~7x more on one CPU thread):
- t: ||d(t)||^2 = t^2 * (sum of a_i^2 over unclipped coordinates) + (sum of u_i^2 over clipped
  ones). Solving that for t with the clipped set of the current t, starting from t = 0, gives an
  increasing sequence that never passes the optimum (so every round is feasible) and stops at it
  once no new coordinate clips. Real images converge in 3-4 rounds (measured on mnist-5k test
  points with Gaussian steps of every scale: 3 rounds within 4e-7 of the fixed point, 4 exact),
  but adversarial cases with many coordinates near the box edges need more; we run 6 (an
  unfinished sequence is still feasible, only slightly short of the optimum). The two masked sums
  of a round are one batched product: the rounds are most of an l_2 attack's cost beside the
  model's.
- tau: bisection brackets it between two breakpoints of the piecewise-linear function (one step
  per mantissa bit), then the closed form on that bracket is solved exactly with masked sums.
The l_2 and l_1 results are finally rescaled by min(1, eps / ||d||) so float rounding can never
leave the ball; scaling towards 0 keeps the box because the box contains 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from workers.attacks.common import as_image, flat, per_sample
from workers.contract.registry import Registry

_TINY = 1e-12


_L2_ROUNDS = 6


def _bisection_steps(dtype: torch.dtype) -> int:
    """Each halving gains one bit: past the mantissa's width the bracket cannot shrink further."""
    return round(-math.log2(torch.finfo(dtype).eps)) + 2

Projection = Callable[[Tensor, Tensor, float | Tensor], Tensor]
PROJECTIONS: Registry[Projection] = Registry("projection")
"""norm -> (x, delta, eps) -> delta projected onto the norm ball ∩ the [0,1] box."""


def project_box(x: Tensor, delta: Tensor) -> Tensor:
    """The perturbation that keeps x + delta inside [0, 1]."""
    return torch.minimum(torch.maximum(delta, -x), 1 - x)


def project_linf(delta: Tensor, eps: float | Tensor) -> Tensor:
    e = as_image(per_sample(eps, delta), delta)
    return torch.minimum(torch.maximum(delta, -e), e)


def project_l2(delta: Tensor, eps: float | Tensor) -> Tensor:
    e = per_sample(eps, delta)
    return delta * as_image(_shrink(flat(delta).norm(dim=1), e), delta)


def project_l1(delta: Tensor, eps: float | Tensor) -> Tensor:
    """Onto the l_1 ball only (no box): the same solver with each coordinate's cap at |v_i|."""
    v = flat(delta)
    return _l1_capped(v, v.abs(), per_sample(eps, delta)).view_as(delta)


@PROJECTIONS.register("linf")
def project_linf_box(x: Tensor, delta: Tensor, eps: float | Tensor) -> Tensor:
    return project_box(x, project_linf(delta, eps))


@PROJECTIONS.register("l2")
def project_l2_box(x: Tensor, delta: Tensor, eps: float | Tensor) -> Tensor:
    """The exact Euclidean projection onto {d : ||d||_2 <= eps, 0 <= x + d <= 1}."""
    v, e = flat(delta), per_sample(eps, delta)
    a, cap = v.abs(), _room(flat(x), v)
    # Coordinate i sits on its box edge once t >= b_i = cap_i / a_i.
    b = torch.where(a > 0, cap / a.clamp_min(_TINY), torch.full_like(a, float("inf")))
    # Both masked sums of a round in one batched product: clipped (N, 1, d) @ [cap^2, a^2] (N, d, 2).
    squares = torch.stack((cap * cap, a * a), dim=2)
    all_a2, e2 = squares[:, :, 1].sum(1, keepdim=True), (e * e)[:, None]
    t = torch.zeros_like(e2)
    for _ in range(_L2_ROUNDS):
        clipped = (b <= t).to(v.dtype).unsqueeze(1)
        edge, clipped_a2 = torch.bmm(clipped, squares).squeeze(1).split(1, dim=1)
        free = all_a2 - clipped_a2
        t = ((e2 - edge).clamp_min(0) / free.clamp_min(_TINY)).sqrt().clamp(max=1.0)
    d = torch.minimum(t * a, cap)
    d = d * _shrink(d.norm(dim=1), e)[:, None]
    return (torch.sign(v) * d).view_as(delta)


@PROJECTIONS.register("l1")
def project_l1_box(x: Tensor, delta: Tensor, eps: float | Tensor) -> Tensor:
    """The exact Euclidean projection onto {d : ||d||_1 <= eps, 0 <= x + d <= 1}."""
    v = flat(delta)
    return _l1_capped(v, _room(flat(x), v), per_sample(eps, delta)).view_as(delta)


def project(norm: str, x: Tensor, delta: Tensor, eps: float | Tensor) -> Tensor:
    """delta projected onto the ``norm`` ball of radius eps intersected with the [0,1] box."""
    return PROJECTIONS.get(norm)(x, delta, eps)


def _room(x: Tensor, v: Tensor) -> Tensor:
    """How far each coordinate may move in the direction of v before leaving [0, 1]."""
    return torch.where(v > 0, 1 - x, x).clamp_min(0)


def _shrink(norms: Tensor, eps: Tensor) -> Tensor:
    return (eps / norms.clamp_min(_TINY)).clamp(max=1.0)


def _l1_capped(v: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
    """argmin ||d - v||_2 s.t. ||d||_1 <= eps, |d_i| <= cap_i, sign(d_i) = sign(v_i); v is (N, d)."""
    a = v.abs()
    tau = torch.where(torch.minimum(a, cap).sum(1) <= eps, torch.zeros_like(eps), _l1_threshold(a, cap, eps))
    d = torch.minimum((a - tau[:, None]).clamp_min(0), cap)
    d = d * _shrink(d.sum(1), eps)[:, None]
    return torch.sign(v) * d


def _l1_threshold(a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
    """The tau >= 0 with g(tau) = eps, g(tau) = sum_i min(max(a_i - tau, 0), cap_i).

    g is flat (= cap_i) for tau <= a_i - cap_i, has slope -1 up to a_i, then is 0. Bisection
    brackets tau (g(lo) > eps >= g(hi)); on the bracket the active and capped sets are fixed, so
    g(tau) = sum_active (a_i - tau) + sum_capped cap_i = eps is solved exactly.
    Only meaningful when g(0) > eps (the caller uses tau = 0 otherwise).
    """
    lo, hi = torch.zeros_like(eps), a.amax(dim=1)
    floor = torch.zeros_like(a)
    for _ in range(_bisection_steps(a.dtype)):
        mid = (lo + hi) / 2
        above = torch.clamp(a - mid[:, None], min=floor, max=cap).sum(1) > eps
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    mid = ((lo + hi) / 2)[:, None]
    lower = a - cap
    active = (lower < mid) & (mid < a)
    mass = torch.where(active, a, torch.where(mid <= lower, cap, 0.0)).sum(1)
    tau = (mass - eps) / active.sum(1).clamp_min(1)
    return torch.minimum(torch.maximum(tau, lo), hi)
