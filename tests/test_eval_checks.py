"""The evaluation checks (``checks.py``; the sanity checks have their own file) and the attacks'
arithmetic (``precision.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from workers.evaluation import checks as checks_module
from workers.evaluation import evaluate
from workers.evaluation.checks import (
    ce_vs_dlr,
    curve_radii,
    robust_sample,
    run_checks,
    square_in_suite,
    unbounded_radius,
)
from workers.evaluation.precision import attack_model, native_bf16, resolve_precision
from workers.evaluation.rng import derive_seed
from workers.evaluation.runner import Ticker
from workers.evaluation.status import verdict
from workers.evaluation.suites import SUITES, AttackSettings, Models, Stage, rerun_stages, resolve_suite
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
    x, y = centre_points(60)
    result = evaluate(MeanPixel(), (x, y), {"linf": 0.02}, checks=60, precision="fp32", steps=10)
    checks = result.checks
    assert checks["status"] == "passed", checks["inconclusive"] + checks["warnings"]
    assert checks["warnings"] == [] and checks["inconclusive"] == [] and checks["n"] == 60
    curve = checks["curves"]["linf"]
    assert curve["status"] == "passed" and curve["n"] == 60
    assert curve["radius"][0] == 0.0 and curve["accuracy"][0] == 1.0
    assert curve["accuracy"] == sorted(curve["accuracy"], reverse=True)
    assert curve["accuracy"][-1] == 0.0  # the unbounded radius fools every point
    assert curve["accuracy"][curve["radius"].index(0.02)] == result.metrics()["linf"] == 1.0
    iterations, square = checks["iterations"]["linf"], checks["square"]["linf"]
    assert iterations == iterations | {"n": 50, "steps": 100, "moved": 0, "status": "passed"}
    assert square == square | {"n": 50, "found": 0, "status": "passed"}
    pair = checks["ce_vs_dlr"]["linf"]
    assert pair == pair | {"n": 60, "found": 0, "status": "passed"}
    assert {name: c["status"] for name, c in checks["sanity"].items()} == dict.fromkeys(
        ("probabilities", "determinism", "dynamic", "classes", "gradients"), "passed")
    assert "ordering" not in checks  # it could not fail: robust flags start from the clean ones
    assert result.metrics()["checks"] == checks


def test_a_tiny_evaluation_is_inconclusive_not_passed() -> None:
    x, y = centre_points(10)
    checks = evaluate(MeanPixel(), (x, y), {"linf": 0.02}, checks=10, precision="fp32", steps=10).checks
    for group in ("curves", "iterations", "square", "ce_vs_dlr"):
        assert checks[group]["linf"]["status"] == "inconclusive", group
    assert checks["iterations"]["linf"]["n"] == 10 and checks["square"]["linf"]["n"] == 10
    assert checks["status"] == "inconclusive" and checks["warnings"] == []
    assert any("linf iterations: only 10 relevant point(s)" in line for line in checks["inconclusive"])


def test_no_rigour_checks_is_never_a_pass() -> None:
    x, y = centre_points(60)
    checks = evaluate(MeanPixel(), (x, y), {"linf": 0.02}, checks=0, precision="fp32", steps=10).checks
    assert "curves" not in checks and checks["status"] == "inconclusive"
    assert any("checks_n = 0" in line for line in checks["inconclusive"])
    assert checks["sanity"]["gradients"]["status"] == "passed"  # the free checks still run


def test_the_robust_sample_comes_from_the_whole_set() -> None:
    robust = np.zeros(1000, dtype=bool)
    robust[[5, 400, 999]] = True
    assert robust_sample(robust, 50, 0, "linf").tolist() == [5, 400, 999]
    robust[::3] = True
    drawn = robust_sample(robust, 50, 0, "linf")
    assert len(drawn) == 50 and robust[drawn].all() and np.all(np.diff(drawn) > 0)
    assert drawn.max() > 500  # not the head of the sample
    np.testing.assert_array_equal(drawn, robust_sample(robust, 50, 0, "linf"))  # seeded
    assert not np.array_equal(drawn, robust_sample(robust, 50, 1, "linf"))


def test_gradient_masking_is_caught_by_square_and_the_gradient_check() -> None:
    x, y = centre_points(60)
    result = evaluate(Masked(), (x, y), {"linf": 0.06}, checks=60, precision="fp32", steps=10)
    checks = result.checks
    assert result.metrics()["linf"] == 1.0  # the white-box suite is blind...
    assert checks["status"] == "failed"
    square = checks["square"]["linf"]
    assert square["n"] == 50 and square["status"] == "failed"
    assert square["found"] >= 10  # ...a black-box attack is not
    assert checks["sanity"]["gradients"] == checks["sanity"]["gradients"] | {"status": "failed", "zero": 60}
    assert any("Square attack fooled" in w and "gradient masking" in w for w in checks["warnings"])
    assert any(w.startswith("sanity/gradients: 60 of 60") for w in checks["warnings"])


class Saturated(MeanPixel):
    """The mean-pixel classifier with logits scaled by 10^4: the same decisions, a softmax that
    saturates in float32, so cross-entropy gradients are exactly zero at correctly classified
    points -- what defensive distillation's student does at T = 1."""

    def forward(self, x: Tensor) -> Tensor:
        return 1e4 * super().forward(x)


def test_saturated_softmax_is_caught_by_ce_vs_dlr_naming_apgd_t() -> None:
    x, y = centre_points(60)
    result = evaluate(Saturated(), (x, y), {"linf": 0.06}, checks=0, precision="fp32", steps=10)
    assert result.stages["linf"]["apgd-ce"] == 1.0 and result.metrics()["linf"] == 0.0
    c = result.checks["ce_vs_dlr"]["linf"]
    assert c == c | {"n": 60, "found": 60, "status": "failed"}
    warnings = result.checks["warnings"]
    assert any(w.startswith("linf: APGD-T (targeted DLR loss) fooled 60 of the 60") for w in warnings)
    assert result.checks["sanity"]["gradients"]["status"] == "failed"


@pytest.mark.parametrize(("after", "n", "status"), [
    ({"apgd-ce": 0.8, "apgd-t": 0.2}, 100, "failed"),
    ({"apgd-ce": 0.8, "apgd-t": 0.7}, 100, "passed"),  # 10 of 80: what APGD-T adds on a sane model
    ({"apgd-ce": 0.8, "apgd-t": 0.2}, 10, "inconclusive"),  # 6 of 8: the share could still be below half
    ({"apgd-ce": 1.0, "apgd-t": 0.0}, 30, "failed"),  # 30 of 30: above half beyond doubt, even on 30 points
    ({"apgd-ce": 0.8, "apgd-t": 0.8}, 10, "inconclusive"),
    ({"apgd-ce": 0.6, "apgd-t": 0.3}, 100, "passed"),  # 30 of 60: the interval reaches below half
    ({"bf16-screen": 0.9, "apgd-ce": 0.8, "apgd-t": 0.3}, 100, "failed"),
])
def test_ce_vs_dlr_verdicts(after, n, status) -> None:
    assert ce_vs_dlr(after, n)["status"] == status


def test_ce_vs_dlr_needs_both_attacks_in_order() -> None:
    assert ce_vs_dlr({"apgd-ce": 0.8}, 100) is None
    assert ce_vs_dlr({"apgd-t": 0.8, "apgd-ce": 0.7}, 100) is None


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


def _checks(fools, eps: float = 0.06, n: int = 64) -> dict:
    x, y = centre_points(n)
    y = y % 8  # classes 0-7: room to move up
    x = (((y.float() + 0.5) / NUM_CLASSES)[:, None, None, None] + 0 * x).clamp(0, 1)
    model = MeanPixel()
    settings = {"linf": AttackSettings("linf", eps)}
    clean = np.ones(n, dtype=bool)
    build = FakeSuite(fools)
    robust = clean & ~np.full(n, fools(settings["linf"]))
    return run_checks(Models.of(model), {"linf": build(settings["linf"])}, build, settings, x, y, clean,
                      {"linf": robust}, {"linf": {"fake": float(robust.mean())}}, ["fake"], n,
                      torch.device("cpu"), Ticker(1, None))


def test_an_attack_that_needs_more_iterations_fails_the_iteration_check() -> None:
    report = _checks(lambda s: (s.steps or 100) >= 1000)
    iterations = report["iterations"]["linf"]
    assert iterations == iterations | {"n": 50, "steps": 1000, "moved": 50, "status": "failed"}
    assert report["status"] == "failed"
    assert any("10x more iterations fooled 50 of 50" in w for w in report["warnings"])


def test_an_attack_that_gives_up_at_larger_radii_fails_the_curve_check() -> None:
    report = _checks(lambda s: 0.06 <= s.eps <= 0.1)  # fools at eps, not at 2 eps or beyond
    curve = report["curves"]["linf"]
    assert curve["status"] == "failed" and curve["rises_at"] == [0.12]
    assert any("rises with the radius" in w for w in report["warnings"])


def test_an_attack_that_never_fools_fails_the_unbounded_radius() -> None:
    report = _checks(lambda s: False)
    curve = report["curves"]["linf"]
    assert curve["status"] == "failed" and curve["rises_at"] == [] and curve["accuracy"][-1] == 1.0
    assert any("survive an unbounded radius" in w for w in report["warnings"])


def test_one_moved_point_is_tolerated_two_are_not() -> None:
    assert verdict(1, 50) == "passed" and verdict(2, 50) == "failed"
    assert verdict(1, 10) == "inconclusive" and verdict(2, 10) == "failed"
    assert verdict(2, 200) == "passed" and verdict(3, 200) == "failed"  # 1 % of 200


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


def test_rerun_stages_leave_square_to_the_square_check() -> None:
    s = AttackSettings("linf", 0.1)

    def names(stages: list[Stage]) -> list[str]:
        return [stage.name for stage in stages]

    assert names(rerun_stages(SUITES.get("standard")(s), s)) == ["apgd-ce", "apgd-t"]
    assert names(rerun_stages(SUITES.get("standard+")(s), s)) == ["apgd-ce", "apgd-t", "aa-fab-t"]
    # no sparse search on l_inf
    assert names(rerun_stages(SUITES.get("strict")(s), s)) == ["apgd-ce", "apgd-t", "aa-fab-t"]
    l1 = AttackSettings("l1", 10.0)
    assert names(SUITES.get("strict")(l1)) == ["apgd-ce", "apgd-t", "aa-fab-t", "aa-square", "sparse"]
    assert names(rerun_stages(SUITES.get("strict")(l1), l1)) == ["apgd-ce", "apgd-t", "aa-fab-t", "sparse"]
    assert names(rerun_stages(SUITES.get("autoattack")(s), s)) == ["aa-apgd-ce", "aa-apgd-t", "aa-fab-t"]
    square_only = resolve_suite(["aa-square"])(s)
    assert names(rerun_stages(square_only, s)) == ["aa-square"]  # nothing else to re-run


@pytest.mark.parametrize(("after", "n", "expected"), [
    ({"apgd-ce": 0.8, "apgd-t": 0.7, "aa-fab-t": 0.7, "aa-square": 0.6}, 100,
     {"n": 70, "found": 10, "status": "failed"}),
    ({"bf16-screen": 0.9, "apgd-ce": 0.8, "apgd-t": 0.7, "aa-fab-t": 0.7, "aa-square": 0.7}, 100,
     {"n": 70, "found": 0, "status": "passed"}),
    ({"apgd-ce": 0.8, "apgd-t": 0.7, "aa-fab-t": 0.69, "aa-square": 0.68}, 100,
     {"n": 69, "found": 1, "status": "passed"}),  # one point: the tolerance
    ({"apgd-ce": 0.5, "aa-square": 0.5}, 40, {"n": 20, "found": 0, "status": "inconclusive"}),
])
def test_square_read_off_the_suite(after, n, expected) -> None:
    c = square_in_suite(after, n)
    assert c == c | expected | {"source": "suite", "queries": 5000}


def test_square_read_off_needs_a_square_stage_after_another() -> None:
    assert square_in_suite({"apgd-ce": 0.8, "apgd-t": 0.7}, 100) is None
    assert square_in_suite({"aa-square": 0.7}, 100) is None
    assert square_in_suite({"apgd-ce": 0.8, "aa-square": 0.7}, 100, steps=10)["queries"] == 500


class WhiteThenBlackBox:
    """A white-box stage that never fools, then a stage named like the suite's Square that fools the
    even-indexed points (the model's own gradients useless, a black-box search not); every call's
    stage, radius and iterations are recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, int | None]] = []

    def __call__(self, s: AttackSettings) -> list[Stage]:
        def white(m: Models, x: Tensor, y: Tensor) -> Tensor:
            self.calls.append(("white", s.eps, s.steps))
            return x

        def black(m: Models, x: Tensor, y: Tensor) -> Tensor:
            self.calls.append(("black", s.eps, s.steps))
            return (x + 0.06).clamp(0, 1)

        return [Stage("fake", white), Stage("aa-square", black)]


def test_a_suite_with_its_own_square_is_judged_from_its_run_not_rerun(monkeypatch) -> None:
    def no_rerun(*args, **kwargs):
        raise AssertionError("the Square check must read the suite's own Square stage, not run it again")

    monkeypatch.setattr(checks_module, "_square", no_rerun)
    n = 128
    x, y = centre_points(n)
    y = y % 8
    x = (((y.float() + 0.5) / NUM_CLASSES)[:, None, None, None] + 0 * x).clamp(0, 1)
    settings = {"linf": AttackSettings("linf", 0.06)}
    build = WhiteThenBlackBox()
    clean = np.ones(n, dtype=bool)
    robust = np.arange(n) % 2 == 1
    report = run_checks(Models.of(MeanPixel()), {"linf": build(settings["linf"])}, build, settings, x, y,
                        clean, {"linf": robust}, {"linf": {"fake": 1.0, "aa-square": 0.5}},
                        ["fake", "aa-square"], n, torch.device("cpu"), Ticker(1, None))
    square = report["square"]["linf"]
    assert square == square | {"n": 128, "found": 64, "status": "failed", "source": "suite"}
    assert any("the suite's black-box Square attack fooled 64 of the 128" in w for w in report["warnings"])
    # the curves and the iterations check ran the white-box stage only
    assert build.calls and {stage for stage, _, _ in build.calls} == {"white"}
    assert ("white", 0.06, 1000) in build.calls  # the iterations check scaled the white-box stage
    assert report["iterations"]["linf"]["n"] == 50


def test_the_free_square_read_off_catches_masking_under_standard_plus() -> None:
    x, y = centre_points(60)
    result = evaluate(Masked(), (x, y), {"linf": 0.06}, suite="standard+", checks=0, precision="fp32",
                      steps=10)
    assert result.stages["linf"]["aa-fab-t"] == 1.0 and result.metrics()["linf"] < 0.85  # Square counted
    square = result.checks["square"]["linf"]
    assert square == square | {"n": 60, "status": "failed", "source": "suite", "queries": 500}
    assert square["found"] >= 10
    assert result.checks["status"] == "failed"
    assert any("the suite's black-box Square attack fooled" in w for w in result.checks["warnings"])
    off = "(curves, 10x iterations) off: checks_n = 0"
    assert any(line.endswith(off) for line in result.checks["inconclusive"])


def test_an_honest_model_passes_every_check_under_standard_plus() -> None:
    x, y = centre_points(60)
    result = evaluate(MeanPixel(), (x, y), {"linf": 0.02}, suite="standard+", checks=60, precision="fp32",
                      steps=10)
    checks = result.checks
    assert checks["status"] == "passed", checks["inconclusive"] + checks["warnings"]
    assert checks["square"]["linf"] == checks["square"]["linf"] | {"n": 60, "found": 0, "source": "suite"}
    iterations = checks["iterations"]["linf"]
    assert iterations == iterations | {"n": 50, "steps": 100, "moved": 0}
    assert checks["curves"]["linf"]["accuracy"][-1] == 0.0


def test_the_square_check_draws_with_a_seed_of_its_own(monkeypatch) -> None:
    seeds: list[int] = []

    def recording_stage(name: str | None, s: AttackSettings) -> Stage:
        seeds.append(s.seed)
        return Stage(f"aa-{name}", lambda m, x, y: x)

    monkeypatch.setattr(checks_module, "autoattack_stage", recording_stage)
    report = _checks(lambda s: False)
    assert report["square"]["linf"]["source"] == "run"
    assert seeds == [derive_seed(0, "square-check", "linf")] and seeds[0] != 0


def test_the_check_rows_say_where_the_square_number_comes_from() -> None:
    from workers.contract.display import check_rows

    report = {"square": {
        "linf": {"n": 70, "status": "failed", "queries": 5000, "found": 10, "source": "suite"},
        "l2": {"n": 50, "status": "passed", "queries": 5000, "found": 0, "source": "run"}}}
    rows = {row["norm"]: row for row in check_rows(report)}
    suite_detail = "the suite's Square (5000 queries) fooled 10 of the white-box stages' survivors"
    assert rows["l_inf"]["detail"] == suite_detail
    assert rows["l_inf"]["mark"] == "✗" and rows["l_inf"]["n"] == 70
    assert rows["l_2"]["detail"] == "Square (5000 queries) fooled 0 robust point(s)"


@pytest.mark.parametrize("suite", ["standard+", "autoattack"])
def test_progress_counts_what_the_checks_rerun(suite: str) -> None:
    """The checks re-run the gradient-based stages (three for one opaque ``autoattack`` stage): the
    progress estimate follows, reaching its total at the end and not before."""
    x, y = centre_points(60)
    calls: list[tuple[int, int]] = []
    evaluate(MeanPixel(), (x, y), {"linf": 0.02}, suite=suite, checks=60, precision="fp32", steps=10,
             progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert [done for done, _ in calls].count(total) == 1 and calls[-1][0] == total
    assert calls[-2][0] >= 0.8 * total  # no large jump at the end either
