"""One steepest-ascent step per norm, projected (PGD and MSD build on it).

- l_inf: step * sign(grad).
- l_2: step * grad / ||grad||_2.
- l_1: the k coordinates with the largest |grad| each move by ``step`` in the sign of the
  gradient (MSD's top-k direction). As in MSD, a pixel that is within ``step`` of the box edge it
  would move towards is skipped, so the k moves are spent on pixels that can actually move.
  Unlike MSD's code, a pixel sitting on an edge may still move inwards, and the result is
  projected exactly onto the l_1 ball ∩ box (MSD: simplex projection, then clip).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from workers.attacks.common import as_image, flat, per_sample
from workers.attacks.projections import project, project_box
from workers.contract.registry import Registry

_TINY = 1e-12

Direction = Callable[[Tensor, Tensor, Tensor, Tensor, int | None], Tensor]
DIRECTIONS: Registry[Direction] = Registry("steepest-ascent direction")
"""norm -> (x, delta, grad, step (N,), k) -> unit-step ascent direction."""


@DIRECTIONS.register("linf")
def linf_direction(x: Tensor, delta: Tensor, grad: Tensor, step: Tensor, k: int | None) -> Tensor:
    return torch.sign(grad)


@DIRECTIONS.register("l2")
def l2_direction(x: Tensor, delta: Tensor, grad: Tensor, step: Tensor, k: int | None) -> Tensor:
    return grad / as_image(flat(grad).norm(dim=1) + _TINY, grad)


@DIRECTIONS.register("l1")
def l1_direction(x: Tensor, delta: Tensor, grad: Tensor, step: Tensor, k: int | None) -> Tensor:
    if k is None or k < 1:
        raise ValueError(f"the l1 steepest step needs the number of coordinates k >= 1, got {k!r}")
    current = x + delta
    gap = as_image(step, x)
    blocked = ((grad < 0) & (current <= gap)) | ((grad > 0) & (current >= 1 - gap))
    magnitude = flat(torch.where(blocked, torch.zeros_like(grad), grad.abs()))
    k = min(k, magnitude.shape[1])
    threshold = magnitude.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    # Zero magnitudes never count: with fewer than k movable pixels only those move.
    keep = (magnitude >= threshold) & (magnitude > 0)
    return torch.sign(grad) * keep.view_as(grad)


def steepest_step(
    norm: str,
    x: Tensor,
    delta: Tensor,
    grad: Tensor,
    step: float | Tensor,
    *,
    k: int | None = None,
    eps: float | Tensor | None = None,
) -> Tensor:
    """delta after one steepest-ascent step of ``norm``, projected.

    ``step`` (float or (N,)) is the move per coordinate for l_inf and l_1 and the l_2 length for
    l_2; ``k`` is the number of l_1 coordinates (required for l_1). With ``eps`` the result is
    projected onto the ``norm`` ball ∩ [0,1] box; without it onto the box only (the caller then
    owns the ball constraint).
    """
    step_b = per_sample(step, x)
    moved = delta + as_image(step_b, x) * DIRECTIONS.get(norm)(x, delta, grad, step_b, k)
    if eps is None:
        return project_box(x, moved)
    return project(norm, x, moved, eps)
