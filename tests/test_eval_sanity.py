"""AutoAttack's sanity checks as checks of their own (``workers.evaluation.sanity``): each fires on a
deliberately broken model and stays quiet on a sane one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.evaluation import evaluate
from workers.evaluation.sanity import classes, determinism, dynamic, gradients, probabilities, run_sanity

SIDE = 8
NUM_CLASSES = 10
CPU = torch.device("cpu")


class MeanPixel(nn.Module):
    """Predicts the class whose centre (k + 0.5) / 10 is nearest to the mean pixel (logits)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.register_buffer("centres", (torch.arange(num_classes) + 0.5) / num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return -200.0 * (x.flatten(1).mean(dim=1, keepdim=True) - self.centres) ** 2


class SoftmaxOutput(MeanPixel):
    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(super().forward(x), dim=1)


class Randomised(MeanPixel):
    """Noise on the input at test time (a randomised defence)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x + 0.05 * torch.randn_like(x))


class Dynamic(MeanPixel):
    """Purifies its input with one gradient step on its own confidence before classifying it."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            confidence = super().forward(z).max(dim=1).values.sum()
            (g,) = torch.autograd.grad(confidence, z)
        return super().forward((x + 0.01 * g.sign()).clamp(0, 1))


class Rounded(MeanPixel):
    """The same decisions behind a rounding step: zero input gradient everywhere."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(torch.round(x.detach() * 255) / 255 + 0 * x)


def points(n: int = 60, num_classes: int = NUM_CLASSES) -> tuple[Tensor, Tensor]:
    y = torch.arange(n) % num_classes
    x = ((y.float() + 0.5) / num_classes)[:, None, None, None].expand(n, 1, SIDE, SIDE).clone()
    return x, y


def statuses(model: nn.Module, n: int = 60, attacks=("apgd-ce", "apgd-t"), num_classes: int = NUM_CLASSES):
    x, y = points(n, num_classes)
    return {name: c["status"] for name, c in run_sanity(model.eval(), x, y, list(attacks), CPU, 64).items()}


def test_a_sane_model_passes_every_sanity_check() -> None:
    assert statuses(MeanPixel()) == dict.fromkeys(
        ("probabilities", "determinism", "dynamic", "classes", "gradients"), "passed")


def test_probability_outputs_fire() -> None:
    x, _ = points()
    report = probabilities(SoftmaxOutput()(x))
    assert report["status"] == "failed" and report["n"] == 60
    assert statuses(SoftmaxOutput())["probabilities"] == "failed"
    assert probabilities(MeanPixel()(x))["status"] == "passed"


def test_a_randomised_forward_pass_fires() -> None:
    x, _ = points()
    torch.manual_seed(0)
    report = determinism(Randomised().eval(), x)
    assert report["status"] == "failed" and report["max_difference"] > 1e-4
    assert determinism(MeanPixel().eval(), x)["status"] == "passed"


def test_a_forward_pass_that_calls_grad_fires() -> None:
    x, _ = points(8)
    report = dynamic(Dynamic().eval(), x)
    assert report["status"] == "failed" and report["backward_calls"] >= 1
    assert dynamic(MeanPixel().eval(), x) == {"n": 8, "status": "passed", "backward_calls": 0}


def test_the_trace_function_is_restored() -> None:
    import sys

    def tracer(*_):
        return None

    sys.settrace(tracer)
    try:
        dynamic(MeanPixel().eval(), points(4)[0])
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)


def test_too_few_classes_for_targeted_attacks_fires() -> None:
    assert classes(3, ["apgd-ce", "apgd-t"])["status"] == "failed"
    assert classes(3, ["apgd-ce"])["status"] == "passed"  # no targeted attack in the suite
    assert classes(4, ["apgd-ce", "apgd-t"])["status"] == "passed"
    assert classes(2, ["aa-fab-t"])["status"] == "failed"
    assert statuses(MeanPixel(3), num_classes=3)["classes"] == "failed"


def test_zero_gradients_fire_and_few_points_are_inconclusive() -> None:
    x, y = points()
    report = gradients(Rounded().eval(), x, y, 64)
    assert report == report | {"status": "failed", "n": 60, "zero": 60}
    assert gradients(MeanPixel().eval(), x, y, 64)["status"] == "passed"
    few = gradients(MeanPixel().eval(), x[:20], y[:20], 64)
    assert few == few | {"status": "inconclusive", "n": 20, "zero": 0}
    # One zero gradient among 60 is within the tolerance (1 %, at least one point).
    mixed = torch.cat([x[:59], x[59:]])
    assert gradients(OneRounded().eval(), mixed, y, 64)["status"] == "passed"


class OneRounded(MeanPixel):
    """Cuts the gradient of the last point of every batch only."""

    def forward(self, x: Tensor) -> Tensor:
        cut = torch.zeros(len(x), 1, 1, 1)
        cut[-1] = 1
        return super().forward(x * (1 - cut) + x.detach() * cut)


def test_non_finite_gradients_fire() -> None:
    class InfiniteSlope(MeanPixel):
        """Finite logits whose input gradient is NaN: sqrt has an infinite slope at 0."""

        def forward(self, x: Tensor) -> Tensor:
            kink = torch.sqrt((x - x.detach()).abs()).sum(dim=(1, 2, 3))[:, None]
            return super().forward(x) + 0 * kink

    x, y = points()
    report = gradients(InfiniteSlope().eval(), x, y, 64)
    assert report["status"] == "failed" and report["nonfinite"] == 60


def test_the_evaluation_reports_failed_sanity_checks_as_warnings() -> None:
    x, y = points()
    result = evaluate(SoftmaxOutput(), (x, y), {"linf": 0.02}, steps=5, precision="fp32")
    assert result.checks["sanity"]["probabilities"]["status"] == "failed"
    assert result.checks["status"] == "failed"
    assert any(w.startswith("sanity/probabilities") for w in result.checks["warnings"])
    assert result.metrics()["checks"]["warnings"] == result.checks["warnings"]
