"""Evaluation suites: which attacks run against each norm.

A suite is either a registered name (``SUITES``, the names of ``workers.contract.catalog.SUITES``) or a list
of attack names (``ATTACKS``, the names of ``workers.contract.catalog.EVAL_ATTACKS``). Both resolve to a list
of ``Stage``s per norm; ``evaluate`` runs the stages in order on the points that are still
classified correctly, so a sample is robust under a norm only if it survives every stage.

- ``standard`` (the default): AutoAttack's APGD-CE then APGD-T with its standard settings per
  norm, our batched implementation (``workers.attacks.standard``): l_inf / l_2 1 CE run + 9
  targets, l_1 5 CE restarts + 5 targets down the 3 eps -> 2 eps -> eps schedule, 100 iterations
  each, "misclassified at any iterate" -- the protocol of the RAMP and E-AT papers. It is AutoAttack
  without FAB-T and Square: the cross-check against pyautoattack's APGD-CE + APGD-T is tested
  (within a point) and benchmarked.
- ``standard+``: ``standard``, then pyautoattack's FAB-T and Square on the points it left robust --
  full AutoAttack's composition.
- ``strict``: ``standard+``, then the sparse search (``workers.attacks.sparse``: k pixels to the
  box's farther end, inside the ball) on l_1 and l_2 on the points still robust -- the strictest
  number: on MNIST models full AutoAttack does not converge on l_1 and the search breaks what it
  leaves (docs/evaluation.md, "Sparse search"). On l_inf it is ``standard+``.
- ``monitor``: one APGD-CE run from the clean point (``steps`` iterations, default 20): the cheap
  per-epoch curve of training. It over-states robustness (no restarts, no targets, no l_1
  schedule -- by tens of points on l_1) and is labelled an upper bound wherever it is shown.
- ``autoattack``: pyautoattack's full standard version (APGD-CE, APGD-T, FAB-T, Square).
- ``unseen``: no l_p stage; ``evaluate`` runs the unseen adversaries (JPEG, fog, snow, Gabor,
  elastic; ``workers.evaluation.unseen``) and the common corruptions instead.
- custom: "apgd-ce" / "apgd-t" (ours, as in ``standard``), "apgd" (the monitor's run), "pgd",
  "sparse" (``strict``'s search; 100 queries per step), and pyautoattack's components
  "aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square" with the standard version's per-norm settings.
  ``steps`` overrides every iteration count.

Every stage attacks and is decided by the float32 model (``Models.exact`` in both fields). The one
place a reduced-precision twin enters is ``screen_stage``: for ``standard``, ``standard+`` and
``strict`` on hardware that multiplies bfloat16 natively, one APGD-CE run on the twin first removes
the points it fools (each confirmed by a float32 forward); every point it leaves robust then faces
the whole float32 suite (``workers.evaluation.precision``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias

from torch import Tensor, nn

from workers.attacks.apgd import apgd
from workers.attacks.pgd import pgd
from workers.attacks.sparse import sparse_budget, sparse_search
from workers.attacks.standard import STANDARD, STANDARD_ITERATIONS, apgd_ce, apgd_t
from workers.contract.norms import Norm
from workers.contract.registry import Registry
from workers.evaluation.autoattack_suite import run_autoattack
from workers.evaluation.validity import output_problem

MONITOR_STEPS = 20
SPARSE_QUERIES_PER_STEP = 100
"""The sparse search's queries per APGD iteration: 10,000 at the standard 100 (Square: 5,000), and
scaled with ``steps`` like every other stage, so the 10x check runs it with 100,000."""
MONITOR_L1_SPARSITY = 0.2


@dataclass(frozen=True)
class AttackSettings:
    """What every stage of one norm is built from."""

    norm: Norm
    eps: float
    seed: int = 0
    steps: int | None = None  # None: the suite's own iteration counts
    batch_size: int = 256

    def iterations(self, default: int = STANDARD_ITERATIONS) -> int:
        return default if self.steps is None else self.steps


@dataclass(frozen=True)
class Models:
    """``exact``: the float32 model the numbers are about; ``attack``: what gradient attacks
    differentiate (the same module, or its reduced-precision twin). Both in eval mode."""

    exact: nn.Module
    attack: nn.Module

    @classmethod
    def of(cls, model: nn.Module) -> Models:
        return cls(model, model)


AttackFn: TypeAlias = Callable[[Models, Tensor, Tensor], Tensor]
"""(models, x, y) -> x_adv inside the norm ball and the [0, 1] box."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: AttackFn


StageBuilder: TypeAlias = Callable[[AttackSettings], AttackFn]
SuiteBuilder: TypeAlias = Callable[[AttackSettings], list[Stage]]

ATTACKS: Registry[StageBuilder] = Registry("evaluation attack")
SUITES: Registry[SuiteBuilder] = Registry("evaluation suite")


@ATTACKS.register("apgd-ce")
def _apgd_ce(s: AttackSettings) -> AttackFn:
    def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
        return apgd_ce(m.attack, x, y, s.norm, s.eps, n_iter=s.iterations(), exact=m.exact,
                       batch_size=s.batch_size)

    return run


@ATTACKS.register("apgd-t")
def _apgd_t(s: AttackSettings) -> AttackFn:
    def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
        return apgd_t(m.attack, x, y, s.norm, s.eps, n_iter=s.iterations(), exact=m.exact,
                      batch_size=s.batch_size)

    return run


@ATTACKS.register("apgd")
def _apgd_single(s: AttackSettings) -> AttackFn:
    def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
        result = apgd(m.attack, x, y, s.norm, s.eps, s.iterations(MONITOR_STEPS), loss="ce",
                      l1_sparsity=MONITOR_L1_SPARSITY)
        assert result.x_fooled is not None
        return result.x_fooled

    return run


@ATTACKS.register("pgd")
def _pgd(s: AttackSettings) -> AttackFn:
    def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
        return pgd(m.attack, x, y, s.norm, s.eps, s.iterations()).x_adv

    return run


@ATTACKS.register("sparse")
def _sparse(s: AttackSettings) -> AttackFn:
    def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
        # forward passes only: the float32 model is attacked and decides
        return sparse_search(m.exact, x, y, s.norm, s.eps, queries=SPARSE_QUERIES_PER_STEP * s.iterations(),
                             seed=s.seed, batch_size=s.batch_size)

    return run


def autoattack_stage(name: str | None, s: AttackSettings) -> Stage:
    """pyautoattack's standard version (``name`` None) or one of its components, as a stage; it
    attacks the exact (float32) model."""
    def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
        return run_autoattack(
            m.exact, x, y, s.norm, s.eps, seed=s.seed, attacks=None if name is None else [name],
            steps=s.steps, batch_size=s.batch_size,
        )

    return Stage("autoattack" if name is None else f"aa-{name}", run)


for _name in ("apgd-ce", "apgd-t", "fab-t", "square"):
    ATTACKS.add(f"aa-{_name}", lambda s, name=_name: autoattack_stage(name, s).run)


@SUITES.register("standard")
def _standard(s: AttackSettings) -> list[Stage]:
    return [Stage(name, ATTACKS.get(name)(s)) for name in ("apgd-ce", "apgd-t")]


@SUITES.register("standard+")
def _standard_plus(s: AttackSettings) -> list[Stage]:
    return [*_standard(s), *(Stage(name, ATTACKS.get(name)(s)) for name in ("aa-fab-t", "aa-square"))]


@SUITES.register("strict")
def _strict(s: AttackSettings) -> list[Stage]:
    # The sparse search only where it can move an input (l_1, l_2; not l_inf at radii below 1).
    sparse = [Stage("sparse", ATTACKS.get("sparse")(s))] if sparse_budget(s.norm, s.eps) else []
    return [*_standard_plus(s), *sparse]


SUITE_SQUARE = "aa-square"  # pyautoattack's Square as a suite stage (``autoattack_stage``'s name)
NOT_RERUN = frozenset({SUITE_SQUARE})
"""Stages the curves and the iterations check do not re-run: Square, whose 10x budget (50,000
queries per robust point) costs more than the rest of the checks together; the Square check reads
the suite's own Square instead (``checks.py``). The sparse search is black-box too but cheap (a
forward pass per query on the points still standing): the checks re-run it, at 10x its queries."""
AUTOATTACK_GRADIENT_PARTS = ("apgd-ce", "apgd-t", "fab-t")


def rerun_stages(stages: list[Stage], s: AttackSettings) -> list[Stage]:
    """The stages of a suite the curves and the iterations check re-run: every stage but Square, and
    for pyautoattack's whole standard version (one opaque stage) its gradient-based components. A
    suite with no such stage is returned as it is (there is nothing else to re-run)."""
    out: list[Stage] = []
    for stage in stages:
        if stage.name == "autoattack":
            out += [autoattack_stage(name, s) for name in AUTOATTACK_GRADIENT_PARTS]
        elif stage.name not in NOT_RERUN:
            out.append(stage)
    return out or list(stages)


SCREENED_SUITES = frozenset({"standard", "standard+", "strict"})
"""Suites whose float32 attacks may be preceded by a reduced-precision screen (``screen_stage``)."""
SCREEN = "bf16-screen"


def screen_stage(s: AttackSettings) -> Stage:
    """One APGD-CE run (AutoAttack's first restart, with the l_1 schedule) differentiating
    ``Models.attack``; the float32 model confirms each point it fools. It only removes points:
    what it leaves robust is attacked by the float32 suite."""
    single = replace(STANDARD[s.norm], restarts=1)

    def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
        return apgd_ce(m.attack, x, y, s.norm, s.eps, n_iter=s.iterations(), settings=single, exact=m.exact,
                       batch_size=s.batch_size)

    return Stage(SCREEN, run)


@SUITES.register("monitor")
def _monitor(s: AttackSettings) -> list[Stage]:
    return [Stage("apgd", ATTACKS.get("apgd")(s))]


@SUITES.register("unseen")
def _unseen(s: AttackSettings) -> list[Stage]:
    # No l_p stage: ``evaluate`` runs the unseen adversaries (``workers.evaluation.unseen``).
    return []


@SUITES.register("autoattack")
def _autoattack(s: AttackSettings) -> list[Stage]:
    return [autoattack_stage(None, s)]


def resolve_suite(suite: str | Sequence[str]) -> SuiteBuilder:
    """The stage builder of a suite name or an attack list; ``ValueError`` names what is unknown."""
    if isinstance(suite, str):
        if suite not in SUITES:
            raise ValueError(
                f"unknown evaluation suite {suite!r}; use one of {', '.join(SUITES.names())} "
                f"or a list of attacks from {', '.join(ATTACKS.names())}"
            )
        return SUITES.get(suite)
    names = list(suite)
    if not names:
        raise ValueError("a custom evaluation suite needs at least one attack")
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        raise ValueError(
            f"unknown evaluation attack(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(ATTACKS.names())}"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"attack(s) listed twice in the suite: {', '.join(duplicated)}")

    def build(s: AttackSettings) -> list[Stage]:
        return [Stage(name, ATTACKS.get(name)(s)) for name in names]

    return build


NORM_SIZE: dict[str, Callable[[Tensor], Tensor]] = {
    "linf": lambda d: d.abs().amax(dim=1),
    "l2": lambda d: d.norm(dim=1),
    "l1": lambda d: d.abs().sum(dim=1),
}
"""norm -> per-sample size of flattened perturbations (N, d)."""


def threat_model_violation(x: Tensor, x_adv: Tensor, norm: Norm, eps: float) -> str | None:
    """Why ``x_adv`` is not a valid perturbation of ``x`` (None when it is).

    A small relative slack absorbs float rounding in the attacks' projections.
    """
    if (problem := output_problem(x, x_adv)) is not None:
        return problem
    delta = (x_adv - x).flatten(1).double()
    size = float(NORM_SIZE[norm](delta).max())
    if size > eps * (1 + 1e-4) + 1e-6:
        return f"{norm} perturbation {size:.6g} > eps {eps:g}"
    return None
