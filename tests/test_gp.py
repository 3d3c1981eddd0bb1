"""Gradient projection: the pure combination rule and the wrapper's epoch mechanics."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from workers.contract import catalog
from workers.methods import MethodContext, build_method
from workers.methods.gp import GradientProjected, project_state
from workers.methods.nt import NaturalTraining

T0 = torch.tensor([1.0, 2.0, 3.0])


def _states(g_n: list[float], g_a: list[float]) -> tuple[dict, dict, dict]:
    theta0 = {"w": T0.clone(), "bn.num_batches_tracked": torch.tensor(5)}
    nat = {"w": T0 + torch.tensor(g_n), "bn.num_batches_tracked": torch.tensor(9)}
    adv = {"w": T0 + torch.tensor(g_a), "bn.num_batches_tracked": torch.tensor(7)}
    return theta0, nat, adv


def test_reference_rule_with_positive_cosine() -> None:
    g_n, g_a = [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]  # cos = 1/sqrt(2)
    out = project_state(*_states(g_n, g_a), beta=0.5)
    c = 2**-0.5
    expected = T0 + 0.5 * torch.tensor(g_a) + 0.5 * c * torch.tensor(g_n)
    assert torch.allclose(out["w"], expected, atol=1e-6)


@pytest.mark.parametrize("g_n", [[-1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # cos < 0 and cos = 0
def test_reference_rule_drops_the_natural_update_when_cosine_is_not_positive(g_n) -> None:
    g_a = [1.0, 1.0, 0.0]
    out = project_state(*_states(g_n, g_a), beta=0.3)
    assert torch.allclose(out["w"], T0 + 0.7 * torch.tensor(g_a), atol=1e-6)


def test_projection_formula_uses_the_true_projection() -> None:
    g_n, g_a = [2.0, 0.0, 0.0], [1.0, 3.0, 0.0]  # <g_a, g_n> = 2, ||g_n||^2 = 4
    out = project_state(*_states(g_n, g_a), beta=0.5, formula="projection")
    expected = T0 + 0.5 * torch.tensor(g_a) + 0.5 * (2 / 4) * torch.tensor(g_n)
    assert torch.allclose(out["w"], expected, atol=1e-6)
    reference = project_state(*_states(g_n, g_a), beta=0.5, formula="reference")
    assert not torch.allclose(out["w"], reference["w"])  # the two formulas really differ
    negative = project_state(*_states([-2.0, 0.0, 0.0], g_a), beta=0.5, formula="projection")
    assert torch.allclose(negative["w"], T0 + 0.5 * torch.tensor(g_a), atol=1e-6)


@pytest.mark.parametrize("formula", ["reference", "projection"])
@pytest.mark.parametrize(("g_n", "g_a"), [([0.0] * 3, [1.0, 2.0, 0.0]), ([1.0, 2.0, 0.0], [0.0] * 3),
                                          ([0.0] * 3, [0.0] * 3)])
def test_zero_deltas_give_no_nan(formula, g_n, g_a) -> None:
    out = project_state(*_states(g_n, g_a), beta=0.5, formula=formula)
    assert torch.isfinite(out["w"]).all()
    assert torch.allclose(out["w"], T0 + 0.5 * torch.tensor(g_a), atol=1e-6)


def test_scalar_and_integer_buffers_come_from_the_adversarial_model() -> None:
    theta0, nat, adv = _states([1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    theta0["scale"], nat["scale"], adv["scale"] = torch.tensor(1.0), torch.tensor(3.0), torch.tensor(2.0)
    theta0["idx"], nat["idx"], adv["idx"] = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([5, 6])
    out = project_state(theta0, nat, adv, beta=0.5)
    assert out["bn.num_batches_tracked"].item() == 7
    assert out["scale"].item() == 2.0
    assert out["idx"].tolist() == [5, 6]


def test_each_tensor_gets_its_own_cosine() -> None:
    theta0 = {"a": torch.zeros(2), "b": torch.zeros(2)}
    nat = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-1.0, 0.0])}
    adv = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 0.0])}
    out = project_state(theta0, nat, adv, beta=0.5)
    assert torch.allclose(out["a"], torch.tensor([1.0, 0.0]))  # c = 1: full natural share
    assert torch.allclose(out["b"], torch.tensor([0.5, 0.0]))  # c = -1: only (1 - beta) g_a


def test_inputs_are_not_modified_and_errors_name_the_problem() -> None:
    theta0, nat, adv = _states([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    saved = copy.deepcopy((theta0, nat, adv))
    project_state(theta0, nat, adv, beta=0.5)
    for got, want in zip((theta0, nat, adv), saved, strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="beta"):
        project_state(theta0, nat, adv, beta=1.5)
    with pytest.raises(ValueError, match="different keys"):
        project_state(theta0, {"w": nat["w"]}, adv, beta=0.5)
    with pytest.raises(KeyError, match="formula"):
        project_state(theta0, nat, adv, beta=0.5, formula="nope")


vectors = st.lists(st.floats(-10, 10), min_size=5, max_size=5)


@settings(max_examples=60, deadline=None)
@given(vectors, vectors, vectors, st.floats(0, 1), st.sampled_from(["reference", "projection"]))
def test_properties_of_both_formulas(t0, n, a, beta, formula) -> None:
    theta0 = {"w": torch.tensor(t0, dtype=torch.float64)}
    nat = {"w": torch.tensor(n, dtype=torch.float64)}
    adv = {"w": torch.tensor(a, dtype=torch.float64)}
    out = project_state(theta0, nat, adv, beta, formula)["w"]
    assert torch.isfinite(out).all()
    # beta = 0 is plain adversarial training; identical updates are kept as they are.
    assert torch.allclose(project_state(theta0, nat, adv, 0.0, formula)["w"], adv["w"])
    assert torch.allclose(project_state(theta0, adv, adv, beta, formula)["w"], adv["w"], atol=1e-9)
    # The natural share is a non-negative multiple of g_n added to (1 - beta) g_a.
    g_a, g_n = adv["w"] - theta0["w"], nat["w"] - theta0["w"]
    extra = out - theta0["w"] - (1 - beta) * g_a
    if g_n.norm() > 1e-9:
        coef = torch.dot(extra, g_n) / torch.dot(g_n, g_n)
        assert coef >= -1e-9 and torch.allclose(extra, coef * g_n, atol=1e-7)


# --- the wrapper on a tiny model ---------------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.rand(16, 2, 2, 2, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(steps)
    ]


class ShiftedCE(NaturalTraining):
    """A stand-in 'adversarial' method: CE on a shifted batch, so the two updates differ."""

    def compute_loss(self, model, x, y):
        return super().compute_loss(model, 1.0 - x, y)


CTX = MethodContext(epsilons={}, params={"gp.beta": 0.5}, num_classes=3, momentum=0.9, weight_decay=5e-4)


def _run_epoch(method, model, opt, data, epoch, lr=0.1, hook=None):
    method.on_epoch_start(model, epoch)
    for x, y in data:
        model.train()
        out = method.compute_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        method.after_step(model, x, y, lr)
    if hook is not None:
        hook()
    method.on_epoch_end(model, epoch)


def _replica_natural_training(theta0: dict, data, lr: float) -> dict:
    """The natural model's expected epoch: clean CE SGD with the main optimiser's groups."""
    from workers.training.optim import build_optimizer

    replica = _model()
    replica.load_state_dict(theta0)
    opt = build_optimizer(replica, lr=lr, momentum=0.9, weight_decay=5e-4)
    for x, y in data:
        replica.train()
        opt.zero_grad()
        F.cross_entropy(replica(x), y).backward()
        opt.step()
    return replica.state_dict()


def test_wrapper_trains_the_natural_model_and_projects_at_epoch_end() -> None:
    from workers.training.optim import build_optimizer

    model, data = _model(), _data(4)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    gp = GradientProjected(ShiftedCE(CTX))
    theta0 = copy.deepcopy(model.state_dict())
    seen = {}

    def before_projection() -> None:
        seen["nat"] = copy.deepcopy(gp.natural.state_dict())
        seen["adv"] = copy.deepcopy(model.state_dict())

    _run_epoch(gp, model, opt, data, 0, hook=before_projection)

    expected_nat = _replica_natural_training(theta0, data, 0.1)
    for k, v in expected_nat.items():
        assert torch.allclose(seen["nat"][k].float(), v.float(), atol=1e-6), k
    assert not torch.allclose(seen["nat"]["1.weight"], seen["adv"]["1.weight"])
    expected = project_state(theta0, seen["nat"], seen["adv"], 0.5)
    for k, v in expected.items():
        assert torch.allclose(model.state_dict()[k].float(), v.float(), atol=1e-6), k
        assert torch.equal(gp.natural.state_dict()[k], model.state_dict()[k]), k
    # BN running statistics are part of the projection (they moved in both models).
    assert not torch.allclose(expected["2.running_mean"], seen["adv"]["2.running_mean"])


def test_natural_momentum_persists_across_epochs_and_weights_reset_to_theta0() -> None:
    from workers.training.optim import build_optimizer

    model, data = _model(), _data(3)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    gp = GradientProjected(ShiftedCE(CTX))
    _run_epoch(gp, model, opt, data, 0)
    param = next(gp.natural.parameters())
    momentum = gp.optimizer.state[param]["momentum_buffer"].clone()
    assert momentum.abs().sum() > 0
    gp.on_epoch_start(model, 1)
    assert torch.equal(gp.optimizer.state[param]["momentum_buffer"], momentum)
    for k, v in model.state_dict().items():
        assert torch.equal(gp.natural.state_dict()[k], v)


def test_build_method_wraps_only_when_enabled() -> None:
    params = catalog.param_defaults("ramp", "mnist-5k", finetune=False)
    ctx = MethodContext(epsilons={"linf": 0.3, "l2": 2.0, "l1": 10.0}, params=params, num_classes=10)
    wrapped = build_method("ramp", ctx)
    assert isinstance(wrapped, GradientProjected) and wrapped.name == "ramp"
    ft = catalog.param_defaults("ramp", "mnist-5k", finetune=True)
    assert not isinstance(build_method("ramp", MethodContext(ctx.epsilons, ft, 10, finetune=True)),
                          GradientProjected)
    eat = catalog.param_defaults("eat", "mnist-5k", finetune=False) | {"gp.enabled": True}
    assert isinstance(build_method("eat", MethodContext(ctx.epsilons, eat, 10)), GradientProjected)


def test_state_dict_round_trip_restores_the_natural_optimiser() -> None:
    from workers.training.optim import build_optimizer

    model, data = _model(), _data(3)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    gp = GradientProjected(ShiftedCE(CTX))
    _run_epoch(gp, model, opt, data, 0)
    buffer = io.BytesIO()
    torch.save(gp.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    restored = GradientProjected(ShiftedCE(CTX))
    restored.load_state_dict(state)
    restored.on_epoch_start(model, 1)
    gp.on_epoch_start(model, 1)
    for p_old, p_new in zip(gp.natural.parameters(), restored.natural.parameters(), strict=True):
        assert torch.equal(gp.optimizer.state[p_old]["momentum_buffer"],
                           restored.optimizer.state[p_new]["momentum_buffer"])
    # ... so the next epoch continues identically.
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    o1 = build_optimizer(m1, lr=0.1, momentum=0.9, weight_decay=5e-4)
    o2 = build_optimizer(m2, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for method, m, o in ((gp, m1, o1), (restored, m2, o2)):
        for x, y in data:
            m.train()
            out = method.compute_loss(m, x, y)
            o.zero_grad()
            out.loss.backward()
            o.step()
            method.after_step(m, x, y, 0.05)
    for a, b in zip(gp.natural.parameters(), restored.natural.parameters(), strict=True):
        assert torch.equal(a, b)


def test_hooks_out_of_order_raise() -> None:
    gp = GradientProjected(ShiftedCE(CTX))
    x, y = _data(1)[0]
    with pytest.raises(RuntimeError, match="before on_epoch_start"):
        gp.after_step(_model(), x, y, 0.1)


# --- the logged cosine between the natural and adversarial updates ---------------------------------


def test_update_cosine_joins_the_tensors_and_ignores_other_keys() -> None:
    from workers.methods.gp import angle_degrees, update_cosine

    theta0 = {"a": torch.zeros(2), "b": torch.zeros(1), "buf": torch.zeros(1)}
    nat = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0]), "buf": torch.tensor([5.0])}
    adv = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0]), "buf": torch.tensor([5.0])}
    # Orthogonal over the parameters; the buffer (same move on both sides) would make it positive.
    assert update_cosine(theta0, nat, adv, ["a", "b"]) == pytest.approx(0.0)
    assert update_cosine(theta0, nat, adv, ["a", "b", "buf"]) > 0.9
    assert angle_degrees(update_cosine(theta0, nat, adv, ["a", "b"])) == pytest.approx(90.0)
    opposite = {k: -v for k, v in nat.items()}
    assert update_cosine(theta0, nat, opposite, ["a"]) == pytest.approx(-1.0)
    assert angle_degrees(-1.0) == pytest.approx(180.0) and angle_degrees(1.0) == pytest.approx(0.0)
    assert update_cosine(theta0, theta0, adv, ["a", "b"]) == 0.0  # no natural update: 0, not NaN


@settings(max_examples=60, deadline=None)
@given(vectors, vectors, vectors, st.floats(0.01, 100))
def test_update_cosine_is_a_bounded_symmetric_scale_free_cosine(t0, n, a, scale) -> None:
    from workers.methods.gp import update_cosine

    theta0 = {"w": torch.tensor(t0, dtype=torch.float64)}
    nat = {"w": torch.tensor(n, dtype=torch.float64)}
    adv = {"w": torch.tensor(a, dtype=torch.float64)}
    c = update_cosine(theta0, nat, adv, ["w"])
    assert -1.0 <= c <= 1.0
    assert c == pytest.approx(update_cosine(theta0, adv, nat, ["w"]), abs=1e-9)
    scaled = {"w": theta0["w"] + scale * (adv["w"] - theta0["w"])}
    assert c == pytest.approx(update_cosine(theta0, nat, scaled, ["w"]), abs=1e-6)
    g_a, g_n = (adv["w"] - theta0["w"]), (nat["w"] - theta0["w"])
    if g_a.norm() > 1e-6 and g_n.norm() > 1e-6:
        expected = float(torch.dot(g_a, g_n) / (g_a.norm() * g_n.norm()))
        assert c == pytest.approx(expected, abs=1e-9)


def test_the_wrapper_reports_the_epochs_cosine_over_parameters() -> None:
    from workers.methods.gp import angle_degrees, update_cosine
    from workers.training.optim import build_optimizer

    model, data = _model(), _data(4)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    gp = GradientProjected(ShiftedCE(CTX))
    assert gp.epoch_metrics() == {}  # before any projected epoch
    theta0 = copy.deepcopy(model.state_dict())
    seen = {}

    def before_projection() -> None:
        seen["nat"] = copy.deepcopy(gp.natural.state_dict())
        seen["adv"] = copy.deepcopy(model.state_dict())

    _run_epoch(gp, model, opt, data, 0, hook=before_projection)
    params = [name for name, _ in model.named_parameters()]
    expected = update_cosine(theta0, seen["nat"], seen["adv"], params)
    got = gp.epoch_metrics()
    assert got["grad_cosine"] == pytest.approx(expected)
    assert got["grad_angle_deg"] == pytest.approx(angle_degrees(expected))
    assert -1.0 < got["grad_cosine"] < 1.0  # the shifted batch makes the two updates differ
    assert NaturalTraining(CTX).epoch_metrics() == {}  # a method without GP reports nothing
