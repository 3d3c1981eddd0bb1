"""APGD-CE and APGD-T with AutoAttack's "standard" settings, batched, on our APGD loop.

What AutoAttack (Croce & Hein 2020; pyautoattack 0.2.0) runs per norm in its standard version,
restricted to its two gradient attacks:

| norm | APGD-CE | APGD-T | random start | radius schedule |
|---|---|---|---|---|
| l_inf, l_2 | 1 run | 9 targets, 1 run each | on the sphere of radius eps | - |
| l_1 | 5 restarts | 5 targets | x + N(0, I) onto the 3 eps ball ∩ box | 3 eps, 2 eps, eps (30/30/40 %) |

100 iterations per run. Target class k (k = 2, 3, ...) is the class with the k-th largest clean
logit. The targeted loss is the targeted DLR loss. The l_1 runs start each radius stage from the
previous stage's highest-loss point projected onto the smaller ball (AutoAttack's ``use_largereps``);
only the last stage (radius eps) can fool a point. A point is fooled when any iterate of any run
was misclassified.

Runs go one after another and each attacks only the points no earlier run fooled. When few points
remain, the next runs go together as one batch (each run's copy of a point with its own random
start and target): on small batches the loop's fixed per-iteration cost dominates, so e.g. nine
target runs on 10 remaining points cost about what one costs. A group fills ``batch_size``. The
first CE restart always goes alone, as it fools most of the points that fall; targets group from
the first (a target fools few of the points APGD-CE left, so little work is spent on points an
earlier target of the same group fooled). Each run is sharded over CPU threads (``parallel.py``).
``model`` is what
the attack differentiates; ``exact`` (default: ``model``) is the model the numbers are about -- they
differ when the attack runs in reduced precision (``workers.evaluation.precision``). ``exact``
ranks the target classes and, after each run, confirms on the handed-on iterate what the attack's
own forward saw; which points remain is the one host read per run, never inside a run's loop. The
functions return, per point, a misclassified iterate where one was found and confirmed, else the
clean input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workers.attacks.apgd import apgd
from workers.attacks.common import as_image, flat, per_sample
from workers.attacks.parallel import default_workers, sharded
from workers.attacks.projections import project
from workers.attacks.result import AttackResult

STANDARD_ITERATIONS = 100
LARGE_RADII: tuple[tuple[float, float], ...] = ((3.0, 0.3), (2.0, 0.3), (1.0, 0.4))
"""The l_1 schedule: (radius as a multiple of eps, share of the iterations)."""


@dataclass(frozen=True)
class StandardSettings:
    """AutoAttack's standard version for one norm (APGD-CE restarts, APGD-T targets, l_1 schedule)."""

    restarts: int
    targets: int
    large_radii: bool


STANDARD: dict[str, StandardSettings] = {
    "linf": StandardSettings(restarts=1, targets=9, large_radii=False),
    "l2": StandardSettings(restarts=1, targets=9, large_radii=False),
    "l1": StandardSettings(restarts=5, targets=5, large_radii=True),
}


def random_start(norm: str, x: Tensor, eps: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """AutoAttack's random starting point for ``norm`` (inside ball ∩ box).

    l_inf: uniform noise rescaled so its largest coordinate is eps; l_2: Gaussian noise rescaled to
    norm eps; l_1: x + N(0, I) projected onto the ball ∩ box. Noise is drawn on the CPU from
    ``generator`` (the same numbers on every device) and clamped into the box.
    """
    def draw(kind: Callable[..., Tensor]) -> Tensor:
        return kind(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    if norm == "linf":
        t = 2 * draw(torch.rand) - 1
        delta = t / as_image(flat(t).abs().amax(1) + 1e-12, x) * as_image(eps, x)
    elif norm == "l2":
        t = draw(torch.randn)
        delta = t / as_image(flat(t).norm(dim=1) + 1e-12, x) * as_image(eps, x)
    elif norm == "l1":
        delta = project("l1", x, draw(torch.randn), eps)
    else:
        raise ValueError(f"no random start for norm {norm!r}")
    return (x + delta).clamp(0, 1)


def schedule_iterations(n_iter: int) -> list[int]:
    """Iterations per stage of the l_1 radius schedule (AutoAttack: ceil 30 %, ceil 30 %, the rest)."""
    first = [math.ceil(share * n_iter) for _, share in LARGE_RADII[:-1]]
    if sum(first) >= n_iter:
        raise ValueError(f"the l_1 radius schedule needs n_iter >= {len(LARGE_RADII)}, got {n_iter}")
    return [*first, n_iter - sum(first)]


def apgd_run(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float | Tensor, n_iter: int, *,
    loss: str, y_target: Tensor | None = None, large_radii: bool = False,
    generator: torch.Generator | None = None, workers: int = 1,
) -> AttackResult:
    """One AutoAttack-style APGD run: random start, then APGD (l_1: down the radius schedule),
    on ``workers`` shards of the batch in parallel (``parallel.py``; the start is drawn first)."""
    eps_b = per_sample(eps, x)
    start = random_start(norm, x, (LARGE_RADII[0][0] if large_radii else 1.0) * eps_b, generator)

    def run(s: slice) -> AttackResult:
        target = None if y_target is None else y_target[s]
        if not large_radii:
            return apgd(model, x[s], y[s], norm, eps_b[s], n_iter, loss=loss, y_target=target,
                        l1_sparsity=0.2, x_init=start[s])
        return _down_the_radii(model, x[s], y[s], norm, eps_b[s], n_iter, loss, target, start[s])

    return sharded(run, x.shape[0], workers)


def _down_the_radii(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: Tensor, n_iter: int, loss: str,
                    y_target: Tensor | None, point: Tensor) -> AttackResult:
    result: AttackResult | None = None
    for (scale, _), steps in zip(LARGE_RADII, schedule_iterations(n_iter), strict=True):
        radius = scale * eps
        point = (x + project(norm, x, point - x, radius)).clamp(0, 1)
        result = apgd(model, x, y, norm, radius, steps, loss=loss, y_target=y_target, l1_sparsity=None,
                      x_init=point)
        point = result.x_adv
    assert result is not None
    return result


Run = Callable[[Tensor, Tensor], AttackResult]
"""(run numbers (g,), points (m,)) -> the result on the g * m copies, run-major."""


def _runs(exact: nn.Module, x: Tensor, y: Tensor, count: int, run: Run, batch_size: int, *,
          first_alone: bool) -> Tensor:
    """Runs 0 .. count-1 on the points not yet fooled; returns the adversarial inputs (the clean
    input where nothing was found)."""
    x_out = x.clone()
    alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    k = 0
    while k < count:
        index = alive.nonzero().squeeze(1)  # the one host read per group of runs
        m = index.numel()
        if m == 0:
            break
        g = 1 if k == 0 and first_alone else min(max(batch_size // m, 1), count - k)
        result = run(torch.arange(k, k + g), index)
        assert result.x_fooled is not None
        # The exact model decides, on every copy: a point the reduced-precision forward saw as
        # misclassified must be misclassified for real, and one it missed may be.
        with torch.no_grad():
            wrong = (exact(result.x_fooled).argmax(dim=1) != y[index].repeat(g)).view(g, m)
        fooled = wrong.any(dim=0)
        which = wrong.to(torch.uint8).argmax(dim=0)  # the first run that fooled each point
        picked = result.x_fooled.view(g, m, *x.shape[1:])[which, torch.arange(m, device=x.device)]
        x_out[index[fooled]] = picked[fooled]
        alive[index[fooled]] = False
        k += g
    return x_out


def apgd_ce(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, *,
    n_iter: int = STANDARD_ITERATIONS, settings: StandardSettings | None = None,
    generator: torch.Generator | None = None, exact: nn.Module | None = None, batch_size: int = 256,
    workers: int | None = None,
) -> Tensor:
    """APGD on the cross-entropy, AutoAttack's restarts and schedule for ``norm``. ``workers``:
    threads each run is sharded over (default: ``parallel.default_workers``)."""
    s = settings or STANDARD[norm]
    threads = default_workers(x.device) if workers is None else workers

    def run(ks: Tensor, index: Tensor) -> AttackResult:
        g = len(ks)
        return apgd_run(model, x[index].repeat(g, *([1] * (x.ndim - 1))), y[index].repeat(g), norm, eps,
                        n_iter, loss="ce", large_radii=s.large_radii, generator=generator, workers=threads)

    return _runs(exact or model, x, y, s.restarts, run, batch_size, first_alone=True)


def apgd_t(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, *,
    n_iter: int = STANDARD_ITERATIONS, settings: StandardSettings | None = None,
    generator: torch.Generator | None = None, exact: nn.Module | None = None, batch_size: int = 256,
    workers: int | None = None,
) -> Tensor:
    """APGD on the targeted DLR loss, one run per target class (the 2nd, 3rd, ... largest clean
    logit), AutoAttack's count of targets and schedule for ``norm``."""
    s = settings or STANDARD[norm]
    threads = default_workers(x.device) if workers is None else workers
    reference = exact or model
    with torch.no_grad():
        logits = reference(x)
    targets = min(s.targets, logits.shape[1] - 1)
    ranked = logits.argsort(dim=1, descending=True).to(x.device)

    def run(ks: Tensor, index: Tensor) -> AttackResult:
        g = len(ks)
        target = ranked[index][:, (ks + 1).to(x.device)].T.reshape(-1)  # run-major, like the copies
        return apgd_run(model, x[index].repeat(g, *([1] * (x.ndim - 1))), y[index].repeat(g), norm, eps,
                        n_iter, loss="dlr", y_target=target, large_radii=s.large_radii, generator=generator,
                        workers=threads)

    return _runs(reference, x, y, targets, run, batch_size, first_alone=False)

