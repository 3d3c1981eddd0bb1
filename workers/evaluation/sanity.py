"""Sanity checks on the model under evaluation: mistakes that make every gradient attack weak.

AutoAttack runs the same kind of checks before it attacks (fra31/auto-attack, ``autoattack/
checks.py``); these are ours, each ending ``passed``, ``failed`` or ``inconclusive`` with the
number of points it looked at (``n``):

- ``probabilities``: every output row lies in [0, 1] and sums to 1 -- the model returns softmax
  probabilities, not logits; cross-entropy on them has tiny, saturating gradients.
- ``determinism``: several forward passes in eval mode on the same points give different logits
  or predictions -- a randomised defence; a fixed-sample attack under-estimates it (it needs an
  expectation over the randomness).
- ``dynamic``: the forward pass itself calls ``backward`` / ``autograd.grad`` (a "dynamic" defence
  that attacks or purifies its input at test time); a gradient through it is not the gradient of
  what is evaluated.
- ``classes``: too few classes for the targeted attacks: the targeted DLR loss reads the 3rd and
  4th largest logits, so with 3 or fewer classes APGD-T cannot run as specified.
- ``gradients``: the cross-entropy's input gradient at the clean point is exactly zero or not
  finite on many correctly classified points -- saturated softmax (e.g. defensive distillation),
  non-differentiable stages or numerical overflow: the signature of gradient masking.

Failure thresholds: ``probabilities``, ``determinism`` and ``dynamic`` fail on any evidence (they
test exact properties); ``gradients`` fails when more than ``allowed(n)`` (1 % of its points, at
least 1) have a zero or non-finite gradient and is ``inconclusive`` on fewer than ``MIN_POINTS``
points when it does not fail.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.evaluation.rng import preserved_trace
from workers.evaluation.status import FAILED, INCONCLUSIVE, MIN_POINTS, PASSED, allowed

PROBE_POINTS = 256
FORWARD_REPEATS = 5
LOGIT_TOLERANCE = 1e-4  # AutoAttack's: on L2-normalised logits
PROBABILITY_TOLERANCE = 1e-5
TARGETED_ATTACKS = frozenset({"apgd-t", "aa-apgd-t", "aa-fab-t"})
MIN_TARGETED_CLASSES = 4
BACKWARD_CALLS = frozenset({"backward", "grad", "_make_grads"})


def finite_or_none(value: float) -> float | None:
    """JSON has no infinities: a logit that overflowed is recorded as null."""
    return value if math.isfinite(value) else None


def _batches(x: Tensor, batch_size: int) -> Iterator[slice]:
    for start in range(0, len(x), batch_size):
        yield slice(start, start + batch_size)


def probabilities(logits: Tensor) -> dict[str, Any]:
    """Whether the outputs look like probability rows."""
    rows_sum_to_one = bool(((logits.sum(dim=1) - 1).abs() < PROBABILITY_TOLERANCE).all())
    in_unit = bool(logits.max() < 1 + PROBABILITY_TOLERANCE) and bool(logits.min() > -PROBABILITY_TOLERANCE)
    looks = rows_sum_to_one and in_unit
    return {"n": len(logits), "status": FAILED if looks else PASSED,
            "min": finite_or_none(float(logits.min())), "max": finite_or_none(float(logits.max()))}


def determinism(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """Repeated eval-mode forwards: the largest difference of L2-normalised logits, and whether
    any prediction changed."""
    with torch.no_grad():
        outs = [model(x) for _ in range(FORWARD_REPEATS)]
    normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
    spread = max(float((normed[i] - normed[0]).norm(dim=1).max()) for i in range(1, len(outs)))
    changed = sum(int((o.argmax(dim=1) != outs[0].argmax(dim=1)).sum()) for o in outs[1:])
    failed = changed > 0 or spread > LOGIT_TOLERANCE
    return {"n": len(x), "status": FAILED if failed else PASSED, "repeats": FORWARD_REPEATS,
            "max_difference": spread, "changed_predictions": changed}


@contextmanager
def _counting_calls(names: frozenset[str]) -> Iterator[dict[str, int]]:
    counts = dict.fromkeys(names, 0)

    def tracer(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name in counts:
            counts[frame.f_code.co_name] += 1

    with preserved_trace():
        sys.settrace(tracer)  # type: ignore[arg-type]
        try:
            yield counts
        finally:
            sys.settrace(None)


def dynamic(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """Whether one forward pass calls backward / autograd.grad."""
    with _counting_calls(BACKWARD_CALLS) as counts:
        model(x)
    calls = sum(counts.values())
    return {"n": len(x), "status": FAILED if calls else PASSED, "backward_calls": calls}


def classes(num_classes: int, attacks: Sequence[str]) -> dict[str, Any]:
    targeted = sorted(TARGETED_ATTACKS & set(attacks))
    failed = bool(targeted) and num_classes < MIN_TARGETED_CLASSES
    return {"n": num_classes, "status": FAILED if failed else PASSED, "classes": num_classes,
            "targeted_attacks": targeted, "targets": max(num_classes - 1, 0)}


def gradients(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> dict[str, Any]:
    """Zero or non-finite cross-entropy input gradients on correctly classified points."""
    zero = nonfinite = n = 0
    for s in _batches(x, batch_size):
        xb = x[s].clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xb)
            correct = logits.argmax(dim=1) == y[s]
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y[s], reduction="sum"), xb)
        size = grad.flatten(1).abs().sum(dim=1)
        finite = torch.isfinite(grad.flatten(1)).all(dim=1)
        n += int(correct.sum())
        zero += int((correct & finite & (size == 0)).sum())
        nonfinite += int((correct & ~finite).sum())
    bad = zero + nonfinite
    status = FAILED if bad > allowed(n) else (INCONCLUSIVE if n < MIN_POINTS else PASSED)
    return {"n": n, "status": status, "zero": zero, "nonfinite": nonfinite}


def run_sanity(model: nn.Module, x: Tensor, y: Tensor, attacks: Sequence[str], device: torch.device,
               batch_size: int) -> dict[str, dict[str, Any]]:
    """Every sanity check on (a probe of) the evaluated points; the model in eval mode."""
    probe = x[:PROBE_POINTS].to(device)
    with torch.no_grad():
        logits = model(probe)
    return {
        "probabilities": probabilities(logits),
        "determinism": determinism(model, probe),
        "dynamic": dynamic(model, probe[: min(len(probe), 8)]),
        "classes": classes(int(logits.shape[1]), attacks),
        "gradients": gradients(model, x.to(device), y.to(device), batch_size),
    }


SANITY_WARNINGS: dict[str, str] = {
    "probabilities": "the model's outputs look like probabilities (rows in [0, 1] summing to 1), not logits: "
                     "cross-entropy attacks on them are weak; evaluate the logits",
    "determinism": "the forward pass is not deterministic in eval mode ({changed_predictions} prediction(s) "
                   "changed over {repeats} passes): a randomised defence needs an attack that averages over "
                   "its randomness (EOT); these numbers over-state its robustness",
    "dynamic": "the forward pass calls backward/grad {backward_calls} time(s): a dynamic defence; gradient "
               "attacks through it are not reliable",
    "classes": "only {classes} classes: the targeted DLR loss of APGD-T needs at least 4, so the suite is "
               "weaker than specified",
    "gradients": "{bad} of {n} correctly classified points have a zero or non-finite cross-entropy input "
                 "gradient at the clean point: gradient masking (saturated softmax, a non-differentiable "
                 "stage or overflow); gradient attacks on the cross-entropy cannot move them",
}


def sanity_warnings(report: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, check in report.items():
        if check.get("status") == FAILED:
            fields = check | {"bad": check.get("zero", 0) + check.get("nonfinite", 0)}
            out.append(f"sanity/{name}: " + SANITY_WARNINGS[name].format(**fields))
    return out


