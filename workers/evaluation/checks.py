"""The evaluation checks: does the reported robustness look like a real lower bound on errors?

Every check records the points it looked at (``n``) and ends ``passed``, ``failed`` or
``inconclusive`` (``status.py``: it fails on more than 1 % of its points, at least one; it passes
only with at least 50 points; ``inconclusive`` is never shown as a pass). Float32 throughout:
the checks attack the model the numbers are about, never a reduced-precision twin.

Rigour checks (with ``checks_n`` > 0; after Carlini et al. 2019, "On Evaluating Adversarial
Robustness"):
- ``curves``: accuracy at radii 0, eps/2, eps, 2 eps, 4 eps and an unbounded radius (l_inf 1,
  l_2 sqrt(d), l_1 d: any image in the box is reachable) on the first ``checks_n`` points, every
  radius attacked independently by the suite's stages but Square (``rerun_stages``: all of
  ``standard``; ``standard+``, ``strict`` without their Square); at eps the reported flags. Accuracy must not
  rise with the radius and must reach ~0 at the unbounded radius; a curve that rises or stays up
  says the attack, not the model, stops.
- ``iterations``: the same stages again with 10x the iterations (the sparse search with 10x its
  queries) on up to 50 points the suite left robust, drawn at random (seeded) from the whole
  evaluated set. If that fools more than the tolerance, the default attack had not converged and
  its number over-states robustness. Square is not re-run (its 10x budget costs more than every
  other check together): the black-box side is the next check's.
- ``square`` (run): pyautoattack's black-box Square attack (5,000 queries, a seed of its own) on
  the same points, for suites without a Square stage. A black-box attack beating the white-box one
  is the signature of gradient masking (AutoAttack's own ``check_square_sr``).
Always (free: read off the suite's own stages and a few forward passes):
- ``square`` (read off the suite): in a suite with its own Square stage (``standard+``), of the
  points every earlier stage left robust, those Square fooled -- the same signature, measured on
  every evaluated point instead of 50, at no cost (AutoAttack's check reads its own run the same
  way). Re-running Square there would repeat the suite's own attack on points it already failed on.
- ``ce_vs_dlr``: of the points APGD-CE left robust, the share APGD-T (targeted DLR loss) fooled.
  DLR is invariant to the scale of the logits; when it fools a large share of what the
  cross-entropy attack could not (``CE_DLR_SHARE``, with 95 % confidence), cross-entropy gradients are masked
  (saturated softmax: defensive distillation is the textbook case) and the warning names APGD-T
  as the component that broke the model.
- ``sanity``: AutoAttack's sanity checks on the model (``sanity.py``).

The report (``EvalResult.checks``, ``metrics.json["checks"]``), fractions in [0, 1]::

    {"status": "inconclusive", "n": 100, "min_points": 50, "warnings": [],
     "inconclusive": ["l1 iterations: ..."],
     "curves": {"linf": {"n": 100, "status": "passed", "radius": [...], "accuracy": [...], "eps": 0.3,
                         "unbounded": 1.0, "rises_at": []}},
     "iterations": {"linf": {"n": 50, "status": "passed", "steps": 1000, "moved": 0}},
     "square": {"linf": {"n": 50, "status": "passed", "queries": 5000, "found": 0, "source": "run"}},
     "ce_vs_dlr": {"linf": {"n": 61, "status": "passed", "found": 1, "share": 0.016}},
     "sanity": {"gradients": {"n": 97, "status": "passed", "zero": 0, "nonfinite": 0}, ...}}

A failed check adds a sentence to ``warnings``, an undecided one to ``inconclusive``; the CLI, the
API and the pages show both next to the numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workers.attacks.standard import STANDARD_ITERATIONS
from workers.contract.stats import wilson_interval
from workers.evaluation.autoattack_suite import SQUARE_QUERIES_PER_STEP
from workers.evaluation.rng import derive_seed
from workers.evaluation.runner import Ticker, run_stage, run_stages
from workers.evaluation.sanity import run_sanity, sanity_warnings
from workers.evaluation.status import FAILED, INCONCLUSIVE, MIN_POINTS, PASSED, combined_status, verdict
from workers.evaluation.suites import (
    MONITOR_STEPS,
    SUITE_SQUARE,
    AttackSettings,
    Models,
    Stage,
    SuiteBuilder,
    autoattack_stage,
    rerun_stages,
)

CURVE_MULTIPLES = (0.5, 1.0, 2.0, 4.0)
ITERATION_FACTOR = 10
SQUARE_QUERIES = 5000
CE_DLR_SHARE = 0.5
"""APGD-T fooling more than this share of the points APGD-CE left robust (the share's 95 % Wilson
interval entirely above it) flags masked CE gradients.
On the models of this project's tests and benchmarks it fools 0-15 % of them (docs/evaluation.md)."""

Plan = Mapping[str, list[Stage]]


def unbounded_radius(norm: str, d: int) -> float:
    """A radius from which every image in [0, 1]^d is reachable from any other."""
    return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]


def curve_radii(norm: str, eps: float, d: int) -> list[float]:
    """0, the multiples of eps below the unbounded radius, and the unbounded radius."""
    top = unbounded_radius(norm, d)
    return [0.0, *sorted({m * eps for m in CURVE_MULTIPLES if m * eps < top}), top]


def suite_steps(stages: list[Stage]) -> int:
    """The largest iteration count among a suite's stages (their own defaults)."""
    return max(MONITOR_STEPS if stage.name == "apgd" else STANDARD_ITERATIONS for stage in stages)


def sample_size(checks_n: int) -> int:
    """Robust points the iterations and Square checks attack: enough to decide, no more."""
    return min(checks_n, MIN_POINTS)


def check_units(plan: Plan, checks_n: int, settings: Mapping[str, AttackSettings]) -> int:
    """Point-evaluations the checks report through progress (an estimate, for the progress bar)."""
    if checks_n == 0:
        return 0
    sub = sample_size(checks_n)
    units = 0
    for norm, stages in plan.items():
        rerun = len(rerun_stages(stages, settings[norm]))  # what the curves and 10x re-run
        units += ((len(CURVE_MULTIPLES) + 1) * checks_n + sub) * rerun + sub
    return units


def robust_sample(robust: np.ndarray, size: int, seed: int, norm: str) -> np.ndarray:
    """Indices of up to ``size`` robust points, drawn without replacement (seeded), in data order."""
    candidates = np.flatnonzero(robust)
    if len(candidates) <= size:
        return candidates
    rng = np.random.default_rng(derive_seed(seed, "check-sample", norm))
    return np.sort(rng.choice(candidates, size=size, replace=False))


def _curve(models: Models, build: SuiteBuilder, s: AttackSettings, x: Tensor, y: Tensor,
           clean: np.ndarray, at_eps: np.ndarray, device: torch.device, tick: Ticker) -> dict[str, Any]:
    d = int(x[0].numel())
    radii = curve_radii(s.norm, s.eps, d)
    counts = []
    for radius in radii:
        if radius == 0.0:
            flags = clean
        elif math.isclose(radius, s.eps):
            flags = at_eps
        else:
            at = replace(s, eps=radius)
            flags, _ = run_stages(models, rerun_stages(build(at), at), at, x, y, clean, device, tick)
        counts.append(int(flags.sum()))
    n = len(x)
    rises = [i for i in range(1, len(radii)) if verdict(counts[i] - counts[i - 1], n) == FAILED]
    stays_up = verdict(counts[-1], n) == FAILED
    status = FAILED if rises or stays_up else (PASSED if n >= MIN_POINTS else INCONCLUSIVE)
    return {"n": n, "status": status, "radius": radii, "accuracy": [c / n for c in counts], "eps": s.eps,
            "unbounded": radii[-1], "rises_at": [radii[i] for i in rises]}


def _more_iterations(models: Models, build: SuiteBuilder, s: AttackSettings, stages: list[Stage], x: Tensor,
                     y: Tensor, device: torch.device, tick: Ticker) -> dict[str, Any]:
    steps = ITERATION_FACTOR * (s.steps if s.steps is not None else suite_steps(stages))
    if len(x) == 0:
        return {"n": 0, "status": INCONCLUSIVE, "steps": steps, "moved": 0}
    more = replace(s, steps=steps)
    alive = np.ones(len(x), dtype=bool)
    after, _ = run_stages(models, rerun_stages(build(more), more), more, x, y, alive, device, tick)
    moved = int(len(x) - after.sum())
    return {"n": len(x), "status": verdict(moved, len(x)), "steps": steps, "moved": moved}


def _square(models: Models, s: AttackSettings, x: Tensor, y: Tensor, device: torch.device,
            tick: Ticker) -> dict[str, Any]:
    if len(x) == 0:
        return {"n": 0, "status": INCONCLUSIVE, "queries": SQUARE_QUERIES, "found": 0, "source": "run"}
    # pyautoattack's own budget (5,000 queries) and a seed of the check's own: where the suite ran
    # Square itself (``autoattack``), the check is a second, independent draw, not the same one again.
    standard = replace(s, steps=None, seed=derive_seed(s.seed, "square-check", s.norm))
    square = autoattack_stage("square", standard)
    after = run_stage(models, square, standard, x, y, np.ones(len(x), dtype=bool), device, tick)
    found = int(len(x) - after.sum())
    return {"n": len(x), "status": verdict(found, len(x)), "queries": SQUARE_QUERIES, "found": found,
            "source": "run"}


def _fooled_later(after: Mapping[str, float], n: int, earlier: str, later: str) -> tuple[int, int]:
    """(points robust after stage ``earlier``, of those the ones stage ``later`` fooled), counted
    from the accuracies after each stage on ``n`` points."""
    survivors = round(after[earlier] * n)
    return survivors, survivors - round(after[later] * n)


def square_in_suite(after: Mapping[str, float], n: int, steps: int | None = None) -> dict[str, Any] | None:
    """Of the points every earlier stage left robust, the ones the suite's own Square stage fooled
    (None when the suite has no Square stage after another). ``after``: accuracy after each stage on
    ``n`` points; ``steps``: the suite's iteration override (Square's queries follow it)."""
    names = list(after)
    if SUITE_SQUARE not in names or names.index(SUITE_SQUARE) == 0:
        return None
    survivors, found = _fooled_later(after, n, names[names.index(SUITE_SQUARE) - 1], SUITE_SQUARE)
    queries = SQUARE_QUERIES if steps is None else SQUARE_QUERIES_PER_STEP * steps
    return {"n": survivors, "status": verdict(found, survivors), "queries": queries, "found": found,
            "source": "suite"}


def ce_vs_dlr(after: Mapping[str, float], n: int) -> dict[str, Any] | None:
    """The share of APGD-CE's survivors APGD-T fooled (None when the suite lacks either)."""
    names = list(after)
    if "apgd-ce" not in names or "apgd-t" not in names or names.index("apgd-t") < names.index("apgd-ce"):
        return None
    survivors, found = _fooled_later(after, n, "apgd-ce", "apgd-t")
    share = found / survivors if survivors else 0.0
    # The share is a noisy estimate on few points (3 of 5 happens on a sane model): it must exceed
    # CE_DLR_SHARE with 95 % confidence (the Wilson interval's lower end) to fail.
    lower = wilson_interval(found, survivors)[0] if survivors else 0.0
    if verdict(found, survivors) == FAILED and lower > CE_DLR_SHARE:
        status = FAILED
    else:
        status = PASSED if survivors >= MIN_POINTS else INCONCLUSIVE
    return {"n": survivors, "status": status, "found": found, "share": share}


def _timed(check: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    out = check(*args)
    return out | {"seconds": round(time.perf_counter() - started, 3)}


def _warnings(report: dict[str, Any]) -> list[str]:
    out = []
    for norm, c in report.get("curves", {}).items():
        if c["rises_at"]:
            where = ", ".join(f"{r:g}" for r in c["rises_at"])
            out.append(f"{norm}: robust accuracy rises with the radius (at {where}): the attack, not the "
                       "model, is failing there")
        if c["status"] == FAILED and not c["rises_at"]:
            out.append(f"{norm}: {c['accuracy'][-1]:.1%} of {c['n']} points survive an unbounded radius "
                       f"({c['unbounded']:g}); a working attack reaches ~0%")
    for norm, c in report.get("iterations", {}).items():
        if c["status"] == FAILED:
            out.append(f"{norm}: {ITERATION_FACTOR}x more iterations fooled {c['moved']} of {c['n']} points "
                       "the suite left robust: the reported number over-states robustness (the attack had "
                       "not converged)")
    for norm, c in report.get("square", {}).items():
        if c["status"] == FAILED and c.get("source") == "suite":
            out.append(f"{norm}: the suite's black-box Square attack fooled {c['found']} of the {c['n']} "
                       "points its white-box stages left robust: a sign of gradient masking (the number "
                       "counts them, but an adaptive or longer black-box attack may find more)")
        elif c["status"] == FAILED:
            out.append(f"{norm}: the black-box Square attack fooled {c['found']} of {c['n']} points the "
                       "white-box suite left robust: a sign of gradient masking")
    for norm, c in report.get("ce_vs_dlr", {}).items():
        if c["status"] == FAILED:
            out.append(f"{norm}: APGD-T (targeted DLR loss) fooled {c['found']} of the {c['n']} points "
                       "APGD-CE left robust: the cross-entropy gradients are masked (e.g. a saturated "
                       "softmax); APGD-T is the component that broke this model, and a CE-only attack would "
                       "over-state its robustness")
    return out + sanity_warnings(report.get("sanity", {}))


def _undecided(report: dict[str, Any]) -> list[str]:
    out = []
    for group in ("curves", "iterations", "square", "ce_vs_dlr"):
        for norm, c in report.get(group, {}).items():
            if c["status"] == INCONCLUSIVE:
                out.append(f"{norm} {group}: only {c['n']} relevant point(s) (fewer than {MIN_POINTS}): "
                           "inconclusive")
    for name, c in report.get("sanity", {}).items():
        if c["status"] == INCONCLUSIVE:
            out.append(f"sanity/{name}: only {c['n']} relevant point(s) (fewer than {MIN_POINTS}): "
                       "inconclusive")
    if not report.get("curves"):
        out.append("rigour checks (curves, 10x iterations" + ("" if report.get("square") else ", Square")
                   + ") off: checks_n = 0")
    return out


def statuses(report: Mapping[str, Any]) -> list[str]:
    """The status of every check in a report."""
    out = []
    for group in ("curves", "iterations", "square", "ce_vs_dlr", "sanity"):
        out += [c["status"] for c in report.get(group, {}).values()]
    return out


def run_checks(models: Models, plan: Plan, build: SuiteBuilder, settings: Mapping[str, AttackSettings],
               x: Tensor, y: Tensor, clean: np.ndarray, robust: Mapping[str, np.ndarray],
               after: Mapping[str, Mapping[str, float]], attacks: Sequence[str], checks_n: int,
               device: torch.device, tick: Ticker) -> dict[str, Any]:
    """Every check. ``x, y, clean, robust``: all evaluated points and their flags; ``after``: each norm's
    accuracy after each stage; ``attacks``: the suite's attack names; ``checks_n``: points of the
    rigour checks (0: only the free checks). ``models`` must be the float32 model (both fields)."""
    n_curve = min(checks_n, len(x))
    report: dict[str, Any] = {"n": n_curve, "min_points": MIN_POINTS}
    in_suite = {norm: square_in_suite(after[norm], len(x), settings[norm].steps) for norm in plan}
    report["square"] = {norm: c for norm, c in in_suite.items() if c is not None}
    if n_curve:
        report |= {"curves": {}, "iterations": {}}
        size = sample_size(n_curve)
        for norm, stages in plan.items():
            s = settings[norm]
            head = slice(0, n_curve)
            report["curves"][norm] = _timed(_curve, models, build, s, x[head], y[head], clean[head],
                                            robust[norm][head], device, tick)
            index = torch.from_numpy(robust_sample(robust[norm], size, s.seed, norm))
            report["iterations"][norm] = _timed(_more_iterations, models, build, s, stages, x[index],
                                                y[index], device, tick)
            if norm not in report["square"]:
                report["square"][norm] = _timed(_square, models, s, x[index], y[index], device, tick)
    pairs = {norm: ce_vs_dlr(after[norm], len(x)) for norm in plan}
    report["ce_vs_dlr"] = {norm: c for norm, c in pairs.items() if c is not None}
    batch_size = next(iter(settings.values())).batch_size
    report["sanity"] = run_sanity(models.exact, x, y, attacks, device, batch_size)
    report["warnings"] = _warnings(report)
    report["inconclusive"] = _undecided(report)
    report["status"] = combined_status(statuses(report) + ([INCONCLUSIVE] if not n_curve else []))
    return report
