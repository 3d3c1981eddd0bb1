"""The evaluation-rigour checks: does the reported robustness look like a real lower bound on errors?

Run with every final evaluation on the first ``n`` evaluated points (a checklist against
over-estimated robustness, after Carlini et al. 2019, "On Evaluating Adversarial Robustness"):

- ``curves``: accuracy of the same suite at radii 0, eps/2, eps, 2 eps, 4 eps and an unbounded
  radius (l_inf 1, l_2 sqrt(d), l_1 d: any image in the box is reachable), every radius attacked
  independently. Accuracy must not rise with the radius (beyond ``TOLERANCE``) and must reach ~0 at
  the unbounded radius; a curve that rises or stays up says the attack, not the model, stops.
- ``iterations``: the suite again with 10x the iterations on the points it left robust among the
  first fifth of the sample (the others are already fooled, with a certificate). If that fools
  more than the tolerance, the default attack had not converged and its number over-states
  robustness.
- ``square``: pyautoattack's black-box Square attack (5,000 queries) on the points the white-box
  suite left robust among the same fifth. A black-box attack beating the white-box one is the
  signature of gradient masking. It queries the module the white-box attacks differentiate
  (``Models.attack``), so both look at the same function; the float32 model decides, as always.
The fifth keeps the two costliest checks (10,000 iterations per norm; 5,000 queries) near the cost
of the evaluation itself.
- ``ordering``: clean >= every norm's robust accuracy >= union accuracy.

Tolerance: a check fails when it moves an accuracy by more than ``TOLERANCE`` of its points, and
always tolerates one point (noise on a small sample).

The report (``EvalResult.checks``, ``metrics.json["checks"]``) has this shape (fractions in [0, 1]):

    {"n": 100, "passed": false, "warnings": ["l1: ..."],
     "curves": {"linf": {"radius": [0.0, 0.15, 0.3, 0.6, 1.0], "accuracy": [0.97, 0.83, 0.64, 0.1, 0.0],
                         "eps": 0.3, "unbounded": 1.0, "passed": true}, ...},
     "iterations": {"linf": {"n": 20, "steps": 1000, "default": 0.65, "more": 0.65, "passed": true}, ...},
     "square": {"linf": {"n": 64, "queries": 5000, "found": 0, "default": 0.64, "after": 0.64,
                         "passed": true}, ...},
     "ordering": {"passed": true}}

``curves`` are also what the web page draws. A failed check adds a sentence to ``warnings``; the
CLI and the API show them next to the numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workers.attacks.standard import STANDARD_ITERATIONS
from workers.evaluation.runner import Ticker, run_stage, run_stages
from workers.evaluation.suites import (
    MONITOR_STEPS,
    AttackSettings,
    Models,
    Stage,
    SuiteBuilder,
    autoattack_stage,
)

CURVE_MULTIPLES = (0.5, 1.0, 2.0, 4.0)
ITERATION_FACTOR = 10
SQUARE_QUERIES = 5000
TOLERANCE = 0.01
SUBSAMPLE_SHARE = 0.2  # of the check points, for the 10x-iterations and Square checks

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


def check_units(plan: Plan, n: int) -> int:
    """Point-evaluations the checks report through progress (an estimate, for the progress bar)."""
    if n == 0:
        return 0
    sub = _subsample(n)
    return sum(((len(CURVE_MULTIPLES) + 1) * n + sub) * len(stages) + sub for stages in plan.values())


def _allowed(n: int) -> int:
    """Points a check may move before it fails."""
    return max(1, math.floor(TOLERANCE * n))


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
            flags, _ = run_stages(models, build(at), at, x, y, clean, device, tick)
        counts.append(int(flags.sum()))
    allowed = _allowed(len(x))
    rises = [i for i in range(1, len(radii)) if counts[i] > counts[i - 1] + allowed]
    return {"radius": radii, "accuracy": [c / len(x) for c in counts], "eps": s.eps, "unbounded": radii[-1],
            "passed": not rises and counts[-1] <= allowed, "rises_at": [radii[i] for i in rises]}


def _subsample(n: int) -> int:
    return max(1, math.ceil(SUBSAMPLE_SHARE * n))


def _more_iterations(models: Models, build: SuiteBuilder, s: AttackSettings, stages: list[Stage], x: Tensor,
                     y: Tensor, robust: np.ndarray, device: torch.device, tick: Ticker) -> dict[str, Any]:
    n = _subsample(len(x))
    x, y, robust = x[:n], y[:n], robust[:n]
    steps = ITERATION_FACTOR * (s.steps if s.steps is not None else suite_steps(stages))
    more = replace(s, steps=steps)
    after, _ = run_stages(models, build(more), more, x, y, robust, device, tick)
    return {"n": n, "steps": steps, "default": float(robust.mean()), "more": float(after.mean()),
            "passed": int(robust.sum() - after.sum()) <= _allowed(n)}


def _square(models: Models, s: AttackSettings, x: Tensor, y: Tensor, robust: np.ndarray,
            device: torch.device, tick: Ticker) -> dict[str, Any]:
    n = _subsample(len(x))
    x, y, robust = x[:n], y[:n], robust[:n]
    standard = replace(s, steps=None)  # pyautoattack's own budget: 5,000 queries
    square = autoattack_stage("square", standard, on="attack")
    after = run_stage(models, square, standard, x, y, robust, device, tick)
    found = int(robust.sum() - after.sum())
    return {"n": n, "attacked": int(robust.sum()), "queries": SQUARE_QUERIES, "found": found,
            "default": float(robust.mean()), "after": float(after.mean()), "passed": found <= _allowed(n)}


def _timed(check: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    out = check(*args)
    return out | {"seconds": round(time.perf_counter() - started, 3)}


def _ordering(clean: np.ndarray, robust: Mapping[str, np.ndarray]) -> dict[str, Any]:
    union = clean.copy()
    for flags in robust.values():
        union &= flags
    accuracies = {norm: float(flags.mean()) for norm, flags in robust.items()}
    ok = all(float(clean.mean()) >= a >= float(union.mean()) for a in accuracies.values())
    return {"passed": ok, "clean": float(clean.mean()), "union": float(union.mean()), **accuracies}


def _warnings(report: dict[str, Any]) -> list[str]:
    out = []
    for norm, c in report["curves"].items():
        if c["rises_at"]:
            where = ", ".join(f"{r:g}" for r in c["rises_at"])
            out.append(f"{norm}: robust accuracy rises with the radius (at {where}): the attack, not the "
                       "model, is failing there")
        if round(c["accuracy"][-1] * report["n"]) > _allowed(report["n"]):
            out.append(f"{norm}: {c['accuracy'][-1]:.1%} of points survive an unbounded radius "
                       f"({c['unbounded']:g}); a working attack reaches ~0%")
    for norm, c in report["iterations"].items():
        if not c["passed"]:
            out.append(f"{norm}: {ITERATION_FACTOR}x more iterations lowered robust accuracy from "
                       f"{c['default']:.1%} to {c['more']:.1%} on {c['n']} points: the reported number "
                       "over-states robustness (the attack had not converged)")
    for norm, c in report["square"].items():
        if not c["passed"]:
            out.append(f"{norm}: the black-box Square attack fooled {c['found']} point(s) the white-box "
                       "suite left robust: a sign of gradient masking")
    if not report["ordering"]["passed"]:
        out.append("clean >= robust >= union does not hold: the numbers are inconsistent")
    return out


def run_checks(models: Models, plan: Plan, build: SuiteBuilder, settings: Mapping[str, AttackSettings],
               x: Tensor, y: Tensor, clean: np.ndarray, robust: Mapping[str, np.ndarray],
               device: torch.device, tick: Ticker) -> dict[str, Any]:
    """Every check on the points ``x, y`` (whose clean / robust flags the evaluation computed)."""
    report: dict[str, Any] = {"n": len(x), "curves": {}, "iterations": {}, "square": {}}
    for norm, stages in plan.items():
        s = settings[norm]
        report["curves"][norm] = _timed(_curve, models, build, s, x, y, clean, robust[norm], device, tick)
        report["iterations"][norm] = _timed(_more_iterations, models, build, s, stages, x, y, robust[norm],
                                            device, tick)
        report["square"][norm] = _timed(_square, models, s, x, y, robust[norm], device, tick)
    report["ordering"] = _ordering(clean, robust)
    report["warnings"] = _warnings(report)
    report["passed"] = not report["warnings"]
    return report

