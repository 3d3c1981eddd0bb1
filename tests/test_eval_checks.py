"""The evaluation-rigour checks and the attack's arithmetic (``checks.py``, ``precision.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from workers.evaluation import evaluate
from workers.evaluation.checks import curve_radii, run_checks, unbounded_radius
from workers.evaluation.precision import attack_model, native_bf16, resolve_precision
from workers.evaluation.runner import Ticker
from workers.evaluation.suites import AttackSettings, Models, Stage
from workers.models import build_model

SIDE = 8
NUM_CLASSES = 10


class MeanPixel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", (torch.arange(NUM_CLASSES) + 0.5) / NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        mean = x.flatten(1).mean(dim=1, keepdim=True)
        return -200.0 * (mean - self.centres) ** 2


class Masked(MeanPixel):
    """The mean-pixel classifier behind a rounding step: the same decisions, zero input gradient
    everywhere (gradient masking in its purest form)."""

    def forward(self, x: Tensor) -> Tensor:
        quantised = x + (torch.round(x * 255) / 255 - x).detach()  # value rounded, gradient...
        return super().forward(quantised.detach() + 0 * x)  # ...cut: d logits / d x = 0


def centre_points(n: int = 10) -> tuple[Tensor, Tensor]:
    classes = torch.arange(n) % NUM_CLASSES
    g = torch.Generator().manual_seed(0)
    noise = 0.01 * (2 * torch.rand(n, 1, SIDE, SIDE, generator=g) - 1)
    noise -= noise.flatten(1).mean(1)[:, None, None, None]
    return (((classes.float() + 0.5) / NUM_CLASSES)[:, None, None, None] + noise).clamp(0, 1), classes


def test_unbounded_radius_reaches_every_image() -> None:
    d = 1 * SIDE * SIDE
    assert unbounded_radius("linf", d) == 1.0
    assert unbounded_radius("l2", d) == pytest.approx(math.sqrt(d))
    assert unbounded_radius("l1", d) == d
    assert curve_radii("linf", 0.3, d) == [0.0, 0.15, 0.3, 0.6, 1.0]  # 4 eps = 1.2 is past the box
    assert curve_radii("l1", 1.0, d) == [0.0, 0.5, 1.0, 2.0, 4.0, 64.0]


def test_an_honest_model_passes_every_check() -> None:
    x, y = centre_points()
    result = evaluate(MeanPixel(), (x, y), {"linf": 0.02}, checks=10, precision="fp32")
    checks = result.checks
    assert checks["passed"] and checks["warnings"] == [] and checks["n"] == 10
    curve = checks["curves"]["linf"]
    assert curve["radius"][0] == 0.0 and curve["accuracy"][0] == 1.0
    assert curve["accuracy"] == sorted(curve["accuracy"], reverse=True)
    assert curve["accuracy"][-1] == 0.0  # the unbounded radius fools every point
    assert curve["accuracy"][curve["radius"].index(0.02)] == result.metrics()["linf"] == 1.0
    assert checks["iterations"]["linf"]["steps"] == 1000 and checks["iterations"]["linf"]["passed"]
    assert checks["square"]["linf"]["found"] == 0 and checks["ordering"]["passed"]
    assert result.metrics()["checks"] == checks


def test_gradient_masking_is_caught_by_square() -> None:
    x, y = centre_points(40)
    result = evaluate(Masked(), (x, y), {"linf": 0.06}, checks=40, precision="fp32", steps=10)
    checks = result.checks
    assert result.metrics()["linf"] == 1.0  # the white-box suite is blind...
    assert not checks["passed"]
    square = checks["square"]["linf"]
    assert square["n"] == 8 and square["attacked"] == 8
    assert square["found"] >= 2  # ...a black-box attack is not
    assert any("gradient masking" in w for w in checks["warnings"])


class FakeSuite:
    """A suite whose single attack fools every point exactly when ``fools(settings)`` says so."""

    def __init__(self, fools) -> None:
        self.fools = fools

    def __call__(self, s: AttackSettings) -> list[Stage]:
        def run(m: Models, x: Tensor, y: Tensor) -> Tensor:
            if not self.fools(s):
                return x
            return (x + 0.06).clamp(0, 1)  # the mean pixel past the next class boundary (eps >= 0.06)

        return [Stage("fake", run)]


def _checks(fools, eps: float = 0.06) -> dict:
    x, y = centre_points(8)  # classes 0-7: room to move up
    model = MeanPixel()
    settings = {"linf": AttackSettings("linf", eps)}
    clean = np.ones(8, dtype=bool)
    build = FakeSuite(fools)
    robust = clean & ~np.full(8, fools(settings["linf"]))
    return run_checks(Models.of(model), {"linf": build(settings["linf"])}, build, settings, x, y, clean,
                      {"linf": robust}, torch.device("cpu"), Ticker(1, None))


def test_an_attack_that_needs_more_iterations_fails_the_iteration_check() -> None:
    report = _checks(lambda s: (s.steps or 100) >= 1000)
    assert report["iterations"]["linf"]["steps"] == 1000 and not report["iterations"]["linf"]["passed"]
    assert report["iterations"]["linf"]["default"] == 1.0 and report["iterations"]["linf"]["more"] == 0.0
    assert any("10x more iterations" in w for w in report["warnings"])


def test_an_attack_that_gives_up_at_larger_radii_fails_the_curve_check() -> None:
    report = _checks(lambda s: 0.06 <= s.eps <= 0.1)  # fools at eps, not at 2 eps or beyond
    curve = report["curves"]["linf"]
    assert not curve["passed"] and curve["rises_at"] == [0.12]
    assert any("rises with the radius" in w for w in report["warnings"])


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", cpu)


def test_the_bf16_twin_is_a_copy_close_to_the_model() -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=(28, 28)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert attack_model(model, "fp32", torch.device("cpu")) is model
    twin = attack_model(model, "bf16", torch.device("cpu"))
    assert twin is not model
    for key, value in model.state_dict().items():  # the caller's model is untouched
        assert value.dtype == torch.float32 and torch.equal(value, before[key])
        assert value.is_contiguous()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact, approx = model(x), twin(x)
    assert approx.dtype == torch.float32
    assert (exact - approx).abs().max() <= 0.05 * exact.abs().max()
    assert (exact.argmax(1) == approx.argmax(1)).float().mean() >= 0.9
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(twin(x).sum(), x)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
