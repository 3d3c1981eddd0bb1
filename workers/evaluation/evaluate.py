"""Clean, per-norm and union accuracy of a classifier (and, optionally, common corruptions).

For each norm the suite's attacks run in order, each only on the points still classified
correctly (clean and under the previous attacks); the per-sample flags stay exact because a point
that is skipped is already wrong (see ``runner``). Float32 decides: every attack that can leave a
point robust differentiates the float32 model; a reduced-precision screen (``precision``) may only
remove points first. The result records the scheme (``precision``: ``fp32`` or
``bf16-screen+fp32``), the evaluated points' digest and per-sample flags (for paired tests) and
the 95 % interval of every accuracy.

Result suites (all but ``monitor``) always get the free checks (``ce_vs_dlr``, the sanity checks);
with ``checks`` > 0 the rigour checks run too (``checks.py``). Everything lands in ``checks``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from workers.contract.catalog import DEFAULT_SUITE, UNSEEN_SUITES, UPPER_BOUND_SUITES
from workers.contract.metrics import FP32, SCREENED
from workers.contract.norms import NORMS, Norm
from workers.contract.samples import points_digest
from workers.contract.unseen import UNSEEN_ATTACKS
from workers.datasets import load_tensors
from workers.evaluation.checks import check_units, run_checks
from workers.evaluation.corruptions import CORRUPTIONS, SEVERITIES
from workers.evaluation.precision import attack_model, resolve_precision
from workers.evaluation.result import CorruptionResult, EvalResult
from workers.evaluation.rng import generator
from workers.evaluation.runner import Progress, Ticker, predict, run_stages
from workers.evaluation.suites import (
    SCREENED_SUITES,
    AttackSettings,
    Models,
    Stage,
    resolve_suite,
    screen_stage,
)
from workers.evaluation.unseen import unseen_flags

Data = str | tuple[Tensor, Tensor]


def _check_epsilons(epsilons: Mapping[str, float]) -> dict[Norm, float]:
    if not epsilons:
        raise ValueError(f"no epsilons given; expected radii for some of {', '.join(NORMS)}")
    out: dict[Norm, float] = {}
    for norm in NORMS:  # canonical order, whatever the caller's
        if norm in epsilons:
            eps = float(epsilons[norm])
            if not eps > 0:
                raise ValueError(f"epsilon for {norm} must be positive, got {epsilons[norm]!r}")
            out[norm] = eps
    unknown = [k for k in epsilons if k not in NORMS]
    if unknown:
        raise ValueError(f"unknown norm(s) {', '.join(map(repr, unknown))}; expected {', '.join(NORMS)}")
    return out


def _load(data: Data, n: int | None, root: str | None) -> tuple[Tensor, Tensor]:
    if isinstance(data, str):
        x, y = load_tensors(data, "test", n, root=root)
    else:
        try:
            x, y = data
        except (TypeError, ValueError):
            kind = type(data).__name__
            raise TypeError(f"data must be a dataset name or an (x, y) pair, got {kind}") from None
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    if n is not None:
        x, y = x[:n], y[:n]
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"expected x (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError("no points to evaluate")
    return x.detach().float().cpu(), y.detach().long().cpu()


def points_digest_of(x: Tensor, y: Tensor) -> str:
    """The digest two evaluations share exactly when they scored the same points."""
    return points_digest(x.float().contiguous().numpy().tobytes(), y.long().contiguous().numpy().tobytes())


def _suite_names(plan: dict[Norm, list[Stage]]) -> list[str]:
    return sorted({stage.name for stages in plan.values() for stage in stages})


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None)
    if param is None:
        param = next(iter(model.buffers()), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; every module's flags restored after."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def _corruption_flags(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch_size: int,
                      seed: int, tick: Ticker) -> CorruptionResult:
    """Correctness on every corruption and severity. One generator per (corruption, severity),
    consumed batch after batch: reproducible for a given seed and batch size."""
    flags: dict[str, np.ndarray] = {}
    for name in CORRUPTIONS:
        corruption = CORRUPTIONS.get(name)
        rows = []
        for severity in SEVERITIES:
            gen = generator(seed, "corruption", name, severity)
            correct = torch.empty(len(x), dtype=torch.bool)
            with torch.no_grad():
                for start in range(0, len(x), batch_size):
                    xb = corruption(x[start:start + batch_size], severity, gen).to(device)
                    yb = y[start:start + batch_size].to(device)
                    correct[start:start + batch_size] = (model(xb).argmax(dim=1) == yb).cpu()
                    tick(len(xb))
            rows.append(correct.numpy())
        flags[name] = np.stack(rows)
    return CorruptionResult(flags)


def evaluate(
    model: nn.Module,
    data: Data,
    epsilons: Mapping[str, float],
    suite: str | Sequence[str] = DEFAULT_SUITE,
    n: int | None = 1000,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    steps: int | None = None,
    precision: str = "auto",
    checks: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    corruptions: bool = False,
    progress: Progress | None = None,
    data_root: str | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the first ``n`` points of ``data`` (all when ``n`` is None).

    ``data`` is a dataset name (its test split) or an ``(x, y)`` pair; ``epsilons`` maps norms to
    radii (only those norms are attacked); ``suite`` is "standard" (the default), "monitor",
    "autoattack" or a list of attack names; ``steps`` overrides the suite's iteration counts;
    ``precision`` says whether a reduced-precision screen may run first ("auto": where the hardware
    multiplies bfloat16 natively; "bf16": always; "fp32": never) -- robust verdicts are float32 in
    every case. ``checks`` > 0 runs the rigour checks (curves on the first ``checks`` points, 10x
    iterations and Square on up to 50 robust points). ``device`` defaults to the model's; given,
    the model is moved there. With ``out_dir`` the result is also saved there.

    The "unseen" suite attacks no l_p ball (``epsilons`` is not used, the norms and their union
    are None): it runs the unseen adversaries with the budgets of the images' family (``steps``
    overrides their iterations) and the common corruptions, and skips the l_p checks.
    """
    build_stages = resolve_suite(suite)  # unknown attack names fail before any work
    named = suite if isinstance(suite, str) else None
    unseen = named in UNSEEN_SUITES
    eps = {} if unseen else _check_epsilons(epsilons)
    corruptions = corruptions or unseen
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if checks < 0:
        raise ValueError(f"checks must be >= 0, got {checks}")
    started = time.perf_counter()
    x, y = _load(data, n, data_root)
    dev = _resolve_device(model, device)
    if device is not None:
        model.to(dev)
    screened = resolve_precision(precision, dev) == "bf16" and named in SCREENED_SUITES
    result_suite = named not in UPPER_BOUND_SUITES and not unseen

    settings = {norm: AttackSettings(norm, e, seed=seed, steps=steps, batch_size=batch_size)
                for norm, e in eps.items()}
    plan = {norm: build_stages(s) for norm, s in settings.items()}
    n_checks = 0 if unseen else min(checks, len(x))
    units = (1 + sum(len(stages) + screened for stages in plan.values())) * len(x)
    units += len(CORRUPTIONS.names()) * len(SEVERITIES) * len(x) if corruptions else 0
    units += check_units(plan, n_checks, settings)
    units += len(UNSEEN_ATTACKS) * len(x) if unseen else 0
    tick = Ticker(units, progress)

    with _inference(model):
        exact = Models.of(model)
        clean = predict(exact, x, y, dev, batch_size, tick)
        robust: dict[str, np.ndarray] = {}
        stage_accuracy: dict[str, dict[str, float]] = {}
        screen = Models(model, attack_model(model, "bf16", dev)) if screened else None
        for norm, stages in plan.items():
            alive, stage_accuracy[norm] = clean, {}
            if screen is not None:
                alive, stage_accuracy[norm] = run_stages(
                    screen, [screen_stage(settings[norm])], settings[norm], x, y, alive, dev, tick)
            robust[norm], after = run_stages(exact, stages, settings[norm], x, y, alive, dev, tick)
            stage_accuracy[norm] |= after
        check_report = None
        if result_suite or n_checks:
            check_report = run_checks(exact, plan, build_stages, settings, x, y, clean, robust,
                                      stage_accuracy, _suite_names(plan), n_checks, dev, tick)
        corruption = _corruption_flags(model, x, y, dev, batch_size, seed, tick) if corruptions else None
        adversaries = unseen_flags(model, x, y, clean, dev, batch_size, seed, steps, tick) if unseen else None
    tick.finish()

    result = EvalResult(
        clean=clean, robust=robust, epsilons=dict(eps),
        suite=suite if isinstance(suite, str) else list(suite),
        seconds=time.perf_counter() - started, stages=stage_accuracy, corruptions=corruption,
        precision=SCREENED if screened else FP32, checks=check_report, points=points_digest_of(x, y),
        unseen=adversaries,
    )
    if out_dir is not None:
        result.save(out_dir)
    return result
