"""RAMP: the pairing losses against hand computations, the x_max rule and the full step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from workers.attacks import AttackResult
from workers.contract import catalog
from workers.methods import MethodContext
from workers.methods.losses import (
    PAIRING_LOSSES,
    cos_pairing,
    kl_batchmean,
    kl_pairing,
    masked_mean,
    mse_pairing,
)
from workers.methods.ramp import RAMP, select_pair_max

EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True))


Z_Q = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]]
Z_R = [[0.0, 1.5, 0.3], [2.0, -1.0, 0.5], [3.0, 0.0, -2.0]]


def test_kl_pairing_equals_hand_computation_over_the_mask() -> None:
    mask = torch.tensor([True, False, True])
    expected = (
        _kl(_softmax(Z_Q[0]), _softmax(Z_R[0])) + _kl(_softmax(Z_Q[2]), _softmax(Z_R[2]))
    ) / 2
    got = kl_pairing(torch.tensor(Z_Q), torch.tensor(Z_R), mask)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # KL(p_q || p_r), not the reverse direction.
    reverse = (_kl(_softmax(Z_R[0]), _softmax(Z_Q[0])) + _kl(_softmax(Z_R[2]), _softmax(Z_Q[2]))) / 2
    assert abs(got.item() - reverse) > 1e-3


def test_mse_and_cos_pairing_equal_hand_computations() -> None:
    mask = torch.tensor([False, True, True])
    mse = cos = 0.0
    for i in (1, 2):
        p, q = _softmax(Z_Q[i]), _softmax(Z_R[i])
        mse += sum((a - b) ** 2 for a, b in zip(p, q, strict=True))
        dot = sum(a * b for a, b in zip(p, q, strict=True))
        cos += 1 - dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in q)))
    zq, zr = torch.tensor(Z_Q), torch.tensor(Z_R)
    assert mse_pairing(zq, zr, mask).item() == pytest.approx(mse / 2, rel=1e-5)
    assert cos_pairing(zq, zr, mask).item() == pytest.approx(cos / 2, rel=1e-5)


@pytest.mark.parametrize("name", ["kl", "mse", "cos"])
def test_pairing_ignores_rows_outside_the_mask(name: str) -> None:
    loss = PAIRING_LOSSES.get(name)
    mask = torch.tensor([True, False, True])
    zq, zr = torch.tensor(Z_Q), torch.tensor(Z_R)
    zr_changed = zr.clone()
    zr_changed[1] = torch.tensor([50.0, -50.0, 7.0])
    assert loss(zq, zr, mask).item() == pytest.approx(loss(zq, zr_changed, mask).item(), abs=1e-7)
    zr_changed[0] += torch.tensor([0.0, 3.0, 0.0])  # a masked-in row does count
    assert loss(zq, zr, mask).item() != pytest.approx(loss(zq, zr_changed, mask).item(), abs=1e-4)


@pytest.mark.parametrize("name", ["kl", "mse", "cos"])
def test_pairing_is_zero_not_nan_for_an_empty_mask(name: str) -> None:
    zq = torch.tensor(Z_Q, requires_grad=True)
    zr = torch.tensor(Z_R, requires_grad=True)
    value = PAIRING_LOSSES.get(name)(zq, zr, torch.zeros(3, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(zq.grad, torch.zeros_like(zq)) and torch.equal(zr.grad, torch.zeros_like(zr))


@pytest.mark.parametrize("name", ["kl", "mse", "cos"])
def test_pairing_gradients_flow_through_both_sides(name: str) -> None:
    zq = torch.tensor(Z_Q, requires_grad=True)
    zr = torch.tensor(Z_R, requires_grad=True)
    mask = torch.tensor([True, False, True])
    PAIRING_LOSSES.get(name)(zq, zr, mask).backward()
    for grad in (zq.grad, zr.grad):
        assert grad[0].abs().sum() > 1e-4 and grad[2].abs().sum() > 1e-4
        assert torch.equal(grad[1], torch.zeros(3))  # outside gamma: no gradient


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=12, max_size=12),
    st.lists(st.floats(-20, 20), min_size=12, max_size=12),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_pairing_losses_are_nonnegative_and_zero_on_identical_logits(a, b, m) -> None:
    zq, zr = torch.tensor(a).view(4, 3), torch.tensor(b).view(4, 3)
    mask = torch.tensor(m)
    for loss in PAIRING_LOSSES.names():
        fn = PAIRING_LOSSES.get(loss)
        value = fn(zq, zr, mask)
        assert torch.isfinite(value) and value.item() >= -1e-6
        assert fn(zq, zq, mask).item() == pytest.approx(0.0, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6),
    st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_masked_mean_is_the_mean_of_the_selected_values(values, m) -> None:
    got = masked_mean(torch.tensor(values, dtype=torch.float64), torch.tensor(m)).item()
    chosen = [v for v, keep in zip(values, m, strict=True) if keep]
    assert got == pytest.approx(sum(chosen) / len(chosen) if chosen else 0.0, rel=1e-9, abs=1e-9)


def test_select_pair_max_takes_r_where_its_loss_is_at_least_q() -> None:
    x_q = torch.zeros(4, 1, 2, 2)
    x_r = torch.ones(4, 1, 2, 2)
    l_q = torch.tensor([1.0, 2.0, 3.0, 0.5])
    l_r = torch.tensor([2.0, 2.0, 1.0, 0.4])  # r wins, tie -> r, q wins, q wins
    out = select_pair_max(x_q, l_q, x_r, l_r)
    assert out[:, 0, 0, 0].tolist() == [1.0, 1.0, 0.0, 0.0]


# --- the full training step with injected attacks -------------------------------------------


class FakeAttack:
    """Returns fixed adversarial batches and losses per norm; records its calls."""

    def __init__(self, table: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.table = table
        self.calls: list[tuple] = []

    def __call__(self, model, x, y, norm, eps, n_iter, *, l1_sparsity):
        self.calls.append((norm, eps, n_iter, l1_sparsity))
        x_adv, loss = self.table[norm]
        return AttackResult(x_adv=x_adv, loss=loss)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _ctx(**params) -> MethodContext:
    return MethodContext(
        epsilons=dict(EPS), params=catalog.param_defaults("ramp", "mnist-5k", False) | params, num_classes=3
    )


def _batches(model: nn.Module) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 2, 2, generator=g)
    x_q = torch.rand(6, 1, 2, 2, generator=g)
    x_r = torch.rand(6, 1, 2, 2, generator=g)
    with torch.no_grad():
        pred_q = model(x_q).argmax(1)
    # Labels: right on x_q for three samples, wrong for the others, so gamma is a proper subset.
    y = torch.where(torch.arange(6) < 3, pred_q, (pred_q + 1) % 3)
    l_q = torch.tensor([1.0, 0.2, 0.7, 0.7, 3.0, 0.1])
    l_r = torch.tensor([0.5, 0.9, 0.7, 0.1, 4.0, 0.3])
    return x, y, x_q, l_q, x_r, l_r


def test_ramp_step_equals_hand_composed_loss() -> None:
    model = _model()
    x, y, x_q, l_q, x_r, l_r = _batches(model)
    attack = FakeAttack({"linf": (x_q, l_q), "l1": (x_r, l_r)})
    method = RAMP(_ctx(**{"ramp.lambda": 5.0}), attack=attack)
    out = method.compute_loss(model, x, y)

    assert [c[0] for c in attack.calls] == ["linf", "l1"]  # no l_2 examples in training
    assert attack.calls[0][1:] == (0.3, 10, 0.05) and attack.calls[1][1:] == (10.0, 10, 0.05)
    take_r = torch.tensor([False, True, True, False, True, True])  # l_r >= l_q, tie at index 2
    x_max = torch.where(take_r.view(-1, 1, 1, 1), x_r, x_q)
    with torch.no_grad():
        z_q, z_r, z_max = model(x_q), model(x_r), model(x_max)
    gamma = [0, 1, 2]
    kl = sum(_kl(_softmax(z_q[i].tolist()), _softmax(z_r[i].tolist())) for i in gamma) / len(gamma)
    ce = F.cross_entropy(z_max, y).item()
    assert out.parts["pairing"].item() == pytest.approx(kl, rel=1e-5)
    assert out.parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out.loss.item() == pytest.approx(ce + 5.0 * kl, rel=1e-5)
    assert out.robust_correct["linf"].item() == 3
    assert out.robust_correct["l1"].item() == (z_r.argmax(1) == y).sum().item()
    assert out.attacked == {"linf": 6, "l1": 6}

    # The parameter gradient is that of the hand-composed loss with no side of the pair detached.
    out.loss.backward()
    twin = _model()
    z_q_t = twin(x_q)
    hand = F.cross_entropy(twin(x_max), y) + 5.0 * kl_pairing(z_q_t, twin(x_r), z_q_t.argmax(1) == y)
    hand.backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    detached = _model()
    z_q_d = detached(x_q).detach()
    pairing_d = kl_pairing(z_q_d, detached(x_r), z_q_d.argmax(1) == y)
    (F.cross_entropy(detached(x_max), y) + 5.0 * pairing_d).backward()
    assert not torch.allclose(model[1].weight.grad, detached[1].weight.grad, atol=1e-4)


def test_ramp_pairing_is_zero_when_no_sample_is_q_correct() -> None:
    model = _model()
    x, _, x_q, l_q, x_r, l_r = _batches(model)
    with torch.no_grad():
        y = (model(x_q).argmax(1) + 1) % 3  # every x_q prediction wrong: gamma is empty
    method = RAMP(_ctx(), attack=FakeAttack({"linf": (x_q, l_q), "l1": (x_r, l_r)}))
    out = method.compute_loss(model, x, y)
    assert out.parts["pairing"].item() == 0.0
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(out.parts["ce"].item())


def test_ramp_trades_form_is_clean_ce_plus_beta_kl_plus_pairing_by_hand() -> None:
    """The reference WRN-28-10 recipe: L = CE(f(x), y) + 6 KL(p_clean || p_max) + lambda * pairing;
    the clean cross-entropy replaces CE(z_max). Every term computed by hand from the logits."""
    model = _model()
    x, y, x_q, l_q, x_r, l_r = _batches(model)
    attack = FakeAttack({"linf": (x_q, l_q), "l1": (x_r, l_r)})
    out = RAMP(_ctx(**{"ramp.lambda": 2.0, "ramp.trades_beta": 6.0}), attack=attack).compute_loss(model, x, y)
    take_r = torch.tensor([False, True, True, False, True, True])
    x_max = torch.where(take_r.view(-1, 1, 1, 1), x_r, x_q)
    with torch.no_grad():
        z_clean, z_max, z_q, z_r = model(x), model(x_max), model(x_q), model(x_r)
    ce_clean = sum(-math.log(_softmax(z_clean[i].tolist())[int(y[i])]) for i in range(6)) / 6
    kl_clean_max = sum(_kl(_softmax(z_clean[i].tolist()), _softmax(z_max[i].tolist())) for i in range(6)) / 6
    gamma = [i for i in range(6) if int(z_q[i].argmax()) == int(y[i])]
    pairing = sum(_kl(_softmax(z_q[i].tolist()), _softmax(z_r[i].tolist())) for i in gamma) / len(gamma)
    assert out.parts["ce"].item() == pytest.approx(ce_clean, rel=1e-5)
    assert out.parts["trades"].item() == pytest.approx(kl_clean_max, rel=1e-5)
    assert out.parts["pairing"].item() == pytest.approx(pairing, rel=1e-5)
    assert out.loss.item() == pytest.approx(ce_clean + 6.0 * kl_clean_max + 2.0 * pairing, rel=1e-5)
    ce_max = F.cross_entropy(z_max, y).item()
    assert abs(out.loss.item() - (ce_max + 6.0 * kl_clean_max + 2.0 * pairing)) > 1e-3  # not the max CE
    assert kl_batchmean(z_clean, z_max).item() == pytest.approx(kl_clean_max, rel=1e-5)


def test_ramp_uses_the_configured_pair_and_pairing_variant() -> None:
    model = _model()
    x, y, x_q, l_q, x_r, l_r = _batches(model)
    attack = FakeAttack({"l2": (x_q, l_q), "linf": (x_r, l_r)})
    ctx = _ctx(**{"ramp.q": "l2", "ramp.r": "linf", "ramp.pairing": "mse", "ramp.lambda": 1.0})
    out = RAMP(ctx, attack=attack).compute_loss(model, x, y)
    assert [c[0] for c in attack.calls] == ["l2", "linf"]
    with torch.no_grad():
        z_q, z_r = model(x_q), model(x_r)
    expected = mse_pairing(z_q, z_r, z_q.argmax(1) == y).item()
    assert out.parts["pairing"].item() == pytest.approx(expected, rel=1e-6)
    assert set(out.robust_correct) == {"l2", "linf"}


class Recorder(nn.Module):
    """Records every train-mode input it sees, then applies ``inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("trades", [0.0, 6.0])
def test_ramp_train_mode_forwards_run_r_then_q_then_max_like_the_reference(trades) -> None:
    torch.manual_seed(0)
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)))
    model.train()
    x, y, x_q, l_q, x_r, l_r = _batches(model)
    model.seen.clear()  # _batches labelled the points with a forward of its own
    model.inner[2].reset_running_stats()
    attack = FakeAttack({"linf": (x_q, l_q), "l1": (x_r, l_r)})
    RAMP(_ctx(**{"ramp.trades_beta": trades}), attack=attack).compute_loss(model, x, y)
    x_max = select_pair_max(x_q, l_q, x_r, l_r)
    expected = [x_r, x_q, x, x_max] if trades else [x_r, x_q, x_max]
    assert len(model.seen) == len(expected)
    for seen, batch in zip(model.seen, expected, strict=True):
        assert torch.equal(seen, batch)

    # The running statistics are those of that order of updates (BN's are order-dependent).
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    for batch in expected:
        twin(batch)
    bn = model.inner[2]
    torch.testing.assert_close(bn.running_mean, twin[2].running_mean)
    torch.testing.assert_close(bn.running_var, twin[2].running_var)
    assert bn.num_batches_tracked.item() == len(expected)


def test_ramp_rejects_equal_pair() -> None:
    with pytest.raises(ValueError, match="different norms"):
        RAMP(_ctx(**{"ramp.q": "l1", "ramp.r": "l1"}), attack=FakeAttack({}))
