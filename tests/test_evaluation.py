"""evaluate(): exact per-sample bookkeeping, suites (standard, monitor, AutoAttack, custom), RNG isolation,
files.

Most tests use a "mean-pixel" classifier whose robustness is known in closed form: it predicts the
class whose centre (k + 0.5) / 10 is nearest to the image's mean pixel. A perturbation moves the
mean by at most eps (l_inf), eps / sqrt(d) (l_2) or eps / d (l_1), so for each point we know
whether it is robust -- the attacks must break exactly the points that can be broken.
"""

from __future__ import annotations

import importlib
import json
import random
import sys

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from workers.contract import catalog
from workers.contract.samples import read_per_sample
from workers.contract.stats import wilson_interval
from workers.datasets import load_npz
from workers.evaluation import ATTACKS, CORRUPTIONS, SUITES, EvalResult, evaluate
from workers.evaluation.autoattack_suite import AA_ATTACKS, build_adversary
from workers.evaluation.result import METRICS_FILE, PER_SAMPLE_FILE
from workers.evaluation.sanity import FORWARD_REPEATS
from workers.evaluation.suites import threat_model_violation

NUM_CLASSES = 10
SIDE = 8  # 1 x 8 x 8 images: d = 64
# Max mean shift: 0.02 (l_inf), 0.2 / 8 = 0.025 (l_2), 1 / 64 = 0.016 (l_1): below the 0.04 margin
# of a centre point, above the 0.005 margin of an edge point.
SMALL_EPS = {"linf": 0.02, "l2": 0.2, "l1": 1.0}
LARGE_EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}
# The package re-exports the function under the module's name; fetch the module itself.
evaluate_module = importlib.import_module("workers.evaluation.evaluate")
METRIC_KEYS = {"clean", "linf", "l2", "l1", "union", "n", "epsilons", "suite", "upper_bound", "precision",
               "seconds", "intervals", "per_sample", "checks"}


class MeanPixelModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", (torch.arange(NUM_CLASSES) + 0.5) / NUM_CLASSES)
        self.scale = nn.Parameter(torch.tensor(200.0))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.flatten(1).mean(dim=1, keepdim=True)
        return -self.scale * (mean - self.centres) ** 2


class ConstantModel(nn.Module):
    """Always predicts ``label`` (the input only enters with weight 0, so autograd still works)."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.register_buffer("logits", 10.0 * nn.functional.one_hot(torch.tensor(label), NUM_CLASSES).float())
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.logits + 0.0 * x.flatten(1).sum(dim=1, keepdim=True)


def mixed_points(seed: int = 0) -> tuple[Tensor, Tensor, dict[str, np.ndarray]]:
    """12 points: 4 "centre" (robust at SMALL_EPS), 4 "edge" (breakable), 4 mislabelled.

    Returns x, y and the exact expected flags at SMALL_EPS.
    """
    g = torch.Generator().manual_seed(seed)
    classes = torch.tensor([1, 4, 6, 9, 0, 3, 5, 8, 2, 7, 9, 0])
    offsets = torch.tensor([0.0] * 4 + [0.045] * 4 + [0.0] * 4)  # edge: 0.005 from the boundary
    noise = 0.01 * (2 * torch.rand(12, 1, SIDE, SIDE, generator=g) - 1)
    noise -= noise.flatten(1).mean(dim=1)[:, None, None, None]  # keep the intended mean exactly
    x = ((classes.float() + 0.5) / NUM_CLASSES + offsets)[:, None, None, None] + noise
    y = classes.clone()
    y[8:] = (classes[8:] + 3) % NUM_CLASSES
    clean = np.array([True] * 8 + [False] * 4)
    robust = np.array([True] * 4 + [False] * 8)
    return x.clamp(0, 1), y, {"clean": clean, "robust": robust}


def assert_consistent(result: EvalResult) -> None:
    m = result.metrics()
    union = result.clean.copy()
    for norm, flags in result.robust.items():
        assert not (flags & ~result.clean).any(), f"{norm}: robust but not clean-correct"
        union &= flags
    np.testing.assert_array_equal(result.union, union)
    evaluated = [m[norm] for norm in result.robust]
    assert m["union"] <= min(evaluated) <= max(evaluated) <= m["clean"]
    for key in ("clean", "union", *result.robust):
        assert 0.0 <= m[key] <= 1.0


@pytest.fixture
def points() -> tuple[Tensor, Tensor, dict[str, np.ndarray]]:
    return mixed_points()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_standard_suite_breaks_exactly_the_breakable_points(points, precision) -> None:
    x, y, expected = points
    result = evaluate(MeanPixelModel(), (x, y), SMALL_EPS, steps=50, precision=precision)
    assert_consistent(result)
    np.testing.assert_array_equal(result.clean, expected["clean"])
    for norm in ("linf", "l2", "l1"):
        np.testing.assert_array_equal(result.robust[norm], expected["robust"], err_msg=norm)
    np.testing.assert_array_equal(result.union, expected["robust"])
    m = result.metrics()
    assert (m["clean"], m["linf"], m["union"]) == (8 / 12, 4 / 12, 4 / 12)
    # bf16: a bfloat16 APGD-CE screen first, then the whole float32 suite on what it left robust.
    screen = {"bf16-screen": 4 / 12} if precision == "bf16" else {}
    expected_stages = screen | {"apgd-ce": 4 / 12, "apgd-t": 4 / 12}
    assert m["attacks"] == {norm: expected_stages for norm in ("linf", "l2", "l1")}
    scheme = {"fp32": "fp32", "bf16": "bf16-screen+fp32"}[precision]
    assert m["suite"] == "standard" and m["upper_bound"] is False and m["precision"] == scheme


class Blind(nn.Module):
    """A twin that sees nothing: constant logits, zero gradients. A reduced-precision pass this weak
    must not leave a single point robust on its own."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(len(x), NUM_CLASSES) + 0 * x.flatten(1).sum(dim=1, keepdim=True)


def test_reduced_precision_never_decides_that_a_point_is_robust(points, monkeypatch) -> None:
    x, y, expected = points
    monkeypatch.setattr(evaluate_module, "attack_model", lambda model, precision, device: Blind())
    result = evaluate(MeanPixelModel(), (x, y), SMALL_EPS, steps=50, precision="bf16")
    m = result.metrics()
    assert m["precision"] == "bf16-screen+fp32"
    # The blind screen left breakable points (only a lucky random start can fool one without
    # gradients); the float32 suite then found every breakable point.
    assert m["attacks"]["linf"]["bf16-screen"] > 4 / 12
    for norm in ("linf", "l2", "l1"):
        np.testing.assert_array_equal(result.robust[norm], expected["robust"], err_msg=norm)


def test_accuracies_carry_wilson_intervals_and_paired_flags(points) -> None:
    x, y, expected = points
    result = evaluate(MeanPixelModel(), (x, y), {"linf": 0.02}, steps=10, precision="fp32")
    m = result.metrics()
    assert set(m["intervals"]) == {"clean", "linf", "union"}
    assert m["intervals"]["clean"] == list(wilson_interval(8, 12))
    assert m["intervals"]["union"] == list(wilson_interval(4, 12))
    lo, hi = m["intervals"]["linf"]
    assert lo < m["linf"] < hi
    digest, flags = read_per_sample(m)
    assert flags["clean"] == expected["clean"].tolist() and flags["union"] == result.union.tolist()
    assert flags["linf"] == result.robust["linf"].tolist()
    # The digest names the points: equal for the same points, different for others.
    again = evaluate(MeanPixelModel(), (x.clone(), y.clone()), {"linf": 0.02}, steps=10, precision="fp32")
    assert read_per_sample(again.metrics())[0] == digest
    other = evaluate(MeanPixelModel(), (x[:11], y[:11]), {"linf": 0.02}, steps=10, precision="fp32")
    assert read_per_sample(other.metrics())[0] != digest


def test_monitor_suite_is_labelled_an_upper_bound(points) -> None:
    x, y, expected = points
    result = evaluate(MeanPixelModel(), (x, y), SMALL_EPS, suite="monitor", steps=20)
    for norm in ("linf", "l2", "l1"):
        np.testing.assert_array_equal(result.robust[norm], expected["robust"], err_msg=norm)
    m = result.metrics()
    assert m["suite"] == "monitor" and m["upper_bound"] is True
    assert m["attacks"] == {norm: {"apgd": 4 / 12} for norm in ("linf", "l2", "l1")}


def test_large_radii_break_everything_and_unattacked_norms_are_none(points) -> None:
    x, y, expected = points
    result = evaluate(MeanPixelModel(), (x, y), LARGE_EPS, suite="monitor", steps=20)
    assert result.metrics()["union"] == 0.0 and result.metrics()["clean"] == 8 / 12
    only_linf = evaluate(MeanPixelModel(), (x, y), {"linf": 0.02}, steps=20)
    m = only_linf.metrics()
    assert m["l2"] is None and m["l1"] is None and set(only_linf.robust) == {"linf"}
    np.testing.assert_array_equal(only_linf.union, expected["robust"])


def test_correct_by_construction_vs_constant_model() -> None:
    x = torch.rand(8, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    y = torch.full((8,), 3)
    right = evaluate(ConstantModel(3), (x, y), LARGE_EPS, steps=10).metrics()
    wrong = evaluate(ConstantModel(5), (x, y), LARGE_EPS, steps=10).metrics()
    for key in ("clean", "linf", "l2", "l1", "union"):
        assert right[key] == 1.0, key
        assert wrong[key] == 0.0, key


def test_only_still_correct_points_are_attacked() -> None:
    x = torch.rand(8, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([3, 0, 3, 1, 3, 2, 3, 4])
    model = ConstantModel(3)
    result = evaluate(model, (x, y), {"linf": 0.1}, steps=5, batch_size=8, precision="fp32")
    assert model.batch_sizes[0] == 8  # the clean pass sees every point
    # APGD-CE, then APGD-T's first target alone, then its other targets as one batch (2 x 4 = 8)
    assert set(model.batch_sizes[1:]) <= {4, 8} and 4 in model.batch_sizes[1:]
    np.testing.assert_array_equal(result.robust["linf"], (y == 3).numpy())

    model = ConstantModel(9)
    evaluate(model, (x, y), {"linf": 0.1}, steps=5, batch_size=8, precision="fp32")
    # Nothing correct: no attack at all -- only the clean pass and the sanity checks' forwards (a
    # probe, the repeated passes of the determinism check, the traced pass, the gradient check).
    assert model.batch_sizes == [8] * (1 + 1 + FORWARD_REPEATS + 1 + 1)


def test_trained_model_robust_never_exceeds_clean() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, NUM_CLASSES, (256,), generator=g)
    images = ((labels.float() + 0.5) / NUM_CLASSES)[:, None, None, None] + 0.1 * torch.randn(
        256, 1, SIDE, SIDE, generator=g)
    images = images.clamp(0, 1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images[:200]), labels[:200]).backward()
        optimiser.step()
    result = evaluate(model, (images[200:], labels[200:]), {"linf": 0.05, "l2": 0.5, "l1": 4.0},
                      steps=20, batch_size=16)
    assert_consistent(result)
    m = result.metrics()
    assert m["clean"] > 0.5  # the model learned something, so the inequalities are not vacuous
    assert m["union"] < m["clean"]


def test_autoattack_standard_suite_end_to_end(points) -> None:
    """The real "standard" configuration (100 iterations, 5000 Square queries) on l_inf."""
    x, y, expected = points
    x, y = x[2:10], y[2:10]  # 2 robust, 4 breakable, 2 misclassified: all four attacks run
    result = evaluate(MeanPixelModel(), (x, y), {"linf": SMALL_EPS["linf"]}, suite="autoattack")
    np.testing.assert_array_equal(result.clean, expected["clean"][2:10])
    np.testing.assert_array_equal(result.robust["linf"], expected["robust"][2:10])
    assert result.metrics()["suite"] == "autoattack"
    assert result.metrics()["attacks"] == {"linf": {"autoattack": 2 / 8}}


@pytest.mark.slow
def test_autoattack_standard_suite_l1(points) -> None:
    """l_1 has its own standard settings (5 restarts, 5 targets, large-eps schedule); Square's
    5000 queries on the robust point make this the slow one (~9 s)."""
    x, y, expected = points
    x, y = x[3:9], y[3:9]
    result = evaluate(MeanPixelModel(), (x, y), {"l1": SMALL_EPS["l1"]}, suite="autoattack")
    np.testing.assert_array_equal(result.robust["l1"], expected["robust"][3:9])
    assert_consistent(result)


def test_custom_suite_of_every_attack(points) -> None:
    x, y, expected = points
    suite = list(catalog.EVAL_ATTACKS)
    result = evaluate(MeanPixelModel(), (x, y), {"linf": 0.02, "l1": 1.0}, suite=suite, steps=6)
    for norm in ("linf", "l1"):
        np.testing.assert_array_equal(result.robust[norm], expected["robust"], err_msg=norm)
        stages = result.metrics()["attacks"][norm]
        assert list(stages) == suite
        assert all(a >= b for a, b in zip(list(stages.values()), list(stages.values())[1:], strict=False))
    assert result.metrics()["suite"] == suite


@pytest.mark.parametrize(
    "suite,match",
    [(["apgd", "fgsm"], "'fgsm'"), ([], "at least one"), (["pgd", "pgd"], "twice"), ("fastest", "'fastest'")],
)
def test_invalid_suites_fail_before_any_work(suite, match) -> None:
    model = ConstantModel(0)
    data = (torch.rand(2, 1, SIDE, SIDE), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=match):
        evaluate(model, data, SMALL_EPS, suite=suite)
    assert model.batch_sizes == []


def test_invalid_epsilons_and_data_are_rejected() -> None:
    data = (torch.rand(2, 1, SIDE, SIDE), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="'l3'"):
        evaluate(ConstantModel(0), data, {"l3": 1.0})
    with pytest.raises(ValueError, match="positive"):
        evaluate(ConstantModel(0), data, {"linf": 0.0})
    with pytest.raises(ValueError, match="no epsilons"):
        evaluate(ConstantModel(0), data, {})
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        evaluate(ConstantModel(0), (torch.rand(2, 64), torch.zeros(2, dtype=torch.long)), SMALL_EPS)


def test_registries_match_the_catalog() -> None:
    assert set(ATTACKS.names()) == set(catalog.EVAL_ATTACKS)
    assert set(SUITES.names()) == set(catalog.SUITES)


def _draw() -> tuple[Tensor, np.ndarray, float]:
    return torch.rand(4), np.random.rand(4), random.random()


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.mark.parametrize("suite", ["autoattack", ["pgd", "aa-square"], "standard"])
def test_caller_rng_streams_are_untouched(points, suite) -> None:
    x, y, _ = points
    _seed_all(123)
    reference = _draw()
    _seed_all(123)
    first = evaluate(MeanPixelModel(), (x, y), {"linf": 0.02, "l2": 0.2}, suite=suite, steps=3)
    after = _draw()
    torch.testing.assert_close(after[0], reference[0], rtol=0, atol=0)
    np.testing.assert_array_equal(after[1], reference[1])
    assert after[2] == reference[2]
    # ...and the result does not depend on the caller's RNG state either.
    _seed_all(999)
    second = evaluate(MeanPixelModel(), (x, y), {"linf": 0.02, "l2": 0.2}, suite=suite, steps=3)
    for norm in first.robust:
        np.testing.assert_array_equal(first.robust[norm], second.robust[norm])


def test_trace_function_survives_autoattack(points) -> None:
    x, y, _ = points
    calls: list[str] = []

    def tracer(frame, event, arg):  # call events only: no per-line tracing, so cheap
        calls.append(event)

    sys.settrace(tracer)
    try:
        evaluate(MeanPixelModel(), (x[:4], y[:4]), {"linf": 0.02}, suite=["aa-apgd-ce"], steps=3)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)


def test_model_state_is_restored_and_eval_mode_is_used() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 16), nn.BatchNorm1d(16), nn.Dropout(0.5),
                          nn.Linear(16, NUM_CLASSES))
    model.train()
    model[1].weight.requires_grad_(False)  # a frozen layer stays frozen, the rest trainable
    stats = model[2].running_mean.clone()
    x, y, _ = mixed_points()
    first = evaluate(model, (x, y), {"linf": 0.05}, steps=5)
    second = evaluate(model, (x, y), {"linf": 0.05}, steps=5)
    np.testing.assert_array_equal(first.clean, second.clean)  # dropout off: deterministic
    np.testing.assert_array_equal(first.robust["linf"], second.robust["linf"])
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True, True, True]
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model[2].running_mean, stats)  # BN statistics not updated


def test_progress_reaches_total(points) -> None:
    x, y, _ = points
    seen: list[tuple[int, int]] = []
    evaluate(MeanPixelModel(), (x, y), SMALL_EPS, steps=5, batch_size=5, precision="fp32",
             progress=lambda done, total: seen.append((done, total)))
    totals = {t for _, t in seen}
    assert totals == {12 * 7}  # clean pass + two stages per norm
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 12 * 7


def test_save_writes_documented_files(points, tmp_path) -> None:
    x, y, expected = points
    result = evaluate(MeanPixelModel(), (x, y), SMALL_EPS, steps=10, out_dir=tmp_path, corruptions=True)
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert METRIC_KEYS | {"corruptions"} <= set(metrics)
    assert metrics["epsilons"] == SMALL_EPS and metrics["n"] == 12 and metrics["suite"] == "standard"
    with np.load(tmp_path / PER_SAMPLE_FILE) as archive:
        arrays = {k: archive[k] for k in archive.files}
    corruption_keys = {f"corruption_{name}" for name in CORRUPTIONS.names()}
    assert set(arrays) == {"clean", "linf", "l2", "l1", "union"} | corruption_keys
    np.testing.assert_array_equal(arrays["union"], expected["robust"])
    every = arrays["clean"] & arrays["linf"] & arrays["l2"] & arrays["l1"]
    np.testing.assert_array_equal(arrays["union"], every)
    assert all(arrays[k].shape == (5, 12) and arrays[k].dtype == bool for k in corruption_keys)
    loaded = EvalResult.load(tmp_path)
    assert loaded.metrics() == result.metrics()


def test_corruption_accuracy_is_reported_per_severity() -> None:
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([2, 2, 2, 0, 1, 2])
    result = evaluate(ConstantModel(2), (x, y), {"linf": 0.1}, steps=3, corruptions=True)
    report = result.metrics()["corruptions"]
    assert set(report["per_corruption"]) == set(CORRUPTIONS.names())
    for entry in report["per_corruption"].values():
        # A constant model is exactly as accurate on corrupted points as on clean ones.
        assert entry["severity"] == {str(s): 4 / 6 for s in range(1, 6)} and entry["mean"] == 4 / 6
    assert report["mean"] == pytest.approx(4 / 6)

    mean_model = evaluate(MeanPixelModel(), mixed_points()[:2], {"linf": 0.02}, steps=3, corruptions=True)
    brightness = mean_model.metrics()["corruptions"]["per_corruption"]["brightness"]["severity"]
    assert brightness["5"] < mean_model.metrics()["clean"]  # +0.3 brightness moves the mean pixel


def test_npz_points_and_first_n(points, tmp_path) -> None:
    x, y, expected = points
    np.savez(tmp_path / "points.npz", x=x.numpy(), y=y.numpy())
    loaded = load_npz(tmp_path / "points.npz")
    result = evaluate(MeanPixelModel(), loaded, {"linf": 0.02}, n=6, steps=10, device="cpu")
    assert result.n == 6
    np.testing.assert_array_equal(result.robust["linf"], expected["robust"][:6])


def test_dataset_name_loads_the_test_split(monkeypatch, points) -> None:
    x, y, expected = points
    calls = []

    def fake_load_tensors(name, split, n=None, root=None):
        calls.append((name, split, n, root))
        return x[:n], y[:n]

    monkeypatch.setattr(evaluate_module, "load_tensors", fake_load_tensors)
    result = evaluate(MeanPixelModel(), "mnist-5k", {"linf": 0.02}, n=10, steps=5)
    assert calls == [("mnist-5k", "test", 10, None)]
    np.testing.assert_array_equal(result.clean, expected["clean"][:10])


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_autoattack_configuration_per_norm(norm) -> None:
    model = MeanPixelModel()
    standard = build_adversary(model, norm, 1.0, seed=5, device="cpu", num_classes=10)
    assert standard.attacks_to_run == list(AA_ATTACKS) and standard.seed == 5
    restarts, targets = (5, 5) if norm == "l1" else (1, 9)
    assert (standard.apgd.n_restarts, standard.apgd_targeted.n_target_classes) == (restarts, targets)
    assert standard.apgd.use_largereps == (norm == "l1")
    assert standard.apgd.n_iter == 100 and standard.square.n_queries == 5000

    custom = build_adversary(model, norm, 1.0, seed=5, device="cpu", num_classes=6, attacks=["apgd-t"],
                             steps=7)
    assert custom.attacks_to_run == ["apgd-t"]
    assert custom.apgd_targeted.n_target_classes == min(targets, 5)  # capped by the 6 classes
    assert custom.apgd_targeted.use_largereps == (norm == "l1")  # standard per-norm settings kept
    assert (custom.apgd.n_iter, custom.apgd_targeted.n_iter_orig, custom.fab.n_iter) == (7, 7, 7)
    assert custom.square.n_queries == 350
    with pytest.raises(ValueError, match="apgd-t needs at least 4 classes"):
        build_adversary(model, norm, 1.0, seed=0, device="cpu", num_classes=3, attacks=["apgd-t"])


def test_threat_model_violations_are_named() -> None:
    x = torch.full((2, 1, 4, 4), 0.5)
    ok = x.clone()
    ok[:, :, 0, 0] += 0.1
    assert threat_model_violation(x, ok, "linf", 0.1) is None
    assert threat_model_violation(x, ok, "l1", 0.1) is None
    assert "linf perturbation" in threat_model_violation(x, ok, "linf", 0.05)
    assert "outside [0, 1]" in threat_model_violation(x, x + 0.6, "linf", 1.0)
    assert "l2 perturbation" in threat_model_violation(x, x + 0.01, "l2", 0.01)
