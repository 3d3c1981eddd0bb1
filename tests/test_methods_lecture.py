"""The lecture's defences: each loss against a hand computation on a tiny batch, and what each
method does with its attack (which examples, which norms, persistence, phases, resume)."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.attacks import AttackResult
from workers.contract import catalog
from workers.contract.norms import NORMS
from workers.methods import MethodContext, build_method
from workers.methods.distill import Distill, teacher_steps
from workers.methods.free import FreeAT
from workers.methods.losses import alp_loss, fgsm_at_loss, mart_loss, soft_ce, vat_loss
from workers.methods.norm_choice import check_mode
from workers.methods.single_step import one_step_attack, random_point
from workers.methods.vat import vat_direction

EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def _ctx(method: str, *, seed: int = 0, total_steps: int = 0, **params) -> MethodContext:
    params = catalog.param_defaults(method, "mnist-5k", False) | params
    return MethodContext(epsilons=dict(EPS), params=params, num_classes=3, seed=seed, total_steps=total_steps)


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _batch(n: int = 6, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class FakeAttack:
    """Fixed adversarial batches and per-sample losses per norm; records the norms asked for."""

    def __init__(self, table: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.table, self.calls = table, []

    def __call__(self, model, x, y, norm, eps, n_iter, *, l1_sparsity):
        self.calls.append(norm)
        x_adv, loss = self.table[norm]
        return AttackResult(x_adv=x_adv, loss=loss)


def _table(n: int = 6) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return {norm: (torch.rand(n, 1, 2, 2, generator=g), torch.rand(n, generator=g)) for norm in NORMS}


# --- the losses by hand -------------------------------------------------------------------------


def test_alp_loss_by_hand() -> None:
    z_clean = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    z_adv = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1])
    total, ce, pairing = alp_loss(z_clean, z_adv, y, 0.5)
    # both rows: CE = log(e^0 + e^1 + e^0) - 0; squared distances 2 and 5
    assert ce.item() == pytest.approx(math.log(2 + math.e), rel=1e-6)
    assert pairing.item() == pytest.approx(3.5, rel=1e-6)
    assert total.item() == pytest.approx(math.log(2 + math.e) + 1.75, rel=1e-6)


def test_mart_loss_by_hand_pushes_down_the_most_likely_wrong_class() -> None:
    z_clean = torch.zeros(2, 3)  # p(x) uniform: p_y = 1/3, weight 2/3
    z_adv = torch.log(torch.tensor([[2.0, 1.0, 1.0], [2.0, 1.0, 1.0]]))  # p(x') = (1/2, 1/4, 1/4)
    y = torch.tensor([0, 1])
    total, bce, robust = mart_loss(z_clean, z_adv, y, 6.0)
    # row 0: -log 1/2 - log(1 - 1/4); row 1: -log 1/4 - log(1 - 1/2) (the wrong class with most mass)
    bce_hand = ((math.log(2) - math.log(0.75)) + (math.log(4) + math.log(2))) / 2
    kl = sum(1 / 3 * (math.log(1 / 3) - math.log(q)) for q in (0.5, 0.25, 0.25))
    assert bce.item() == pytest.approx(bce_hand, rel=1e-6)
    assert robust.item() == pytest.approx(kl * 2 / 3, rel=1e-5)
    assert total.item() == pytest.approx(bce_hand + 6.0 * kl * 2 / 3, rel=1e-5)


def test_mart_weight_vanishes_for_a_confident_clean_prediction() -> None:
    z_clean = torch.tensor([[50.0, 0.0, 0.0]])
    _, _, robust = mart_loss(z_clean, torch.zeros(1, 3), torch.tensor([0]), 1.0)
    assert robust.item() < 1e-12


def test_fgsm_at_loss_by_hand() -> None:
    z_clean, z_adv, y = torch.zeros(1, 3), torch.log(torch.tensor([[1.0, 3.0, 0.0001]])), torch.tensor([0])
    ce_adv = -math.log(1 / 4.0001)
    assert fgsm_at_loss(z_clean, z_adv, y, 0.25).item() == pytest.approx(0.25 * math.log(3) + 0.75 * ce_adv,
                                                                          rel=1e-5)


def test_vat_loss_by_hand_and_its_regulariser_ignores_labels_and_the_clean_gradient() -> None:
    z_clean = torch.zeros(1, 3, requires_grad=True)
    z_adv = torch.log(torch.tensor([[2.0, 1.0, 1.0]])).requires_grad_(True)
    total, ce, lds = vat_loss(z_clean, z_adv, torch.tensor([2]), 2.0)
    kl = sum(1 / 3 * (math.log(1 / 3) - math.log(q)) for q in (0.5, 0.25, 0.25))
    assert ce.item() == pytest.approx(math.log(3), rel=1e-6) and lds.item() == pytest.approx(kl, rel=1e-5)
    assert total.item() == pytest.approx(math.log(3) + 2 * kl, rel=1e-5)
    for label in (0, 1):
        assert vat_loss(z_clean, z_adv, torch.tensor([label]), 2.0)[2].item() == lds.item()
    (g_clean,) = torch.autograd.grad(lds, z_clean, allow_unused=True, retain_graph=True)
    assert g_clean is None  # p(x) is a constant in the regulariser
    (g_ce,) = torch.autograd.grad(total, z_clean)
    assert torch.allclose(g_ce, torch.full((1, 3), 1 / 3) - F.one_hot(torch.tensor([2]), 3))


def test_soft_ce_by_hand() -> None:
    T = 10.0
    z = torch.tensor([[T * math.log(3.0), 0.0, 0.0]])  # softmax(z / T) = (3/5, 1/5, 1/5)
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    assert soft_ce(z, soft, T).item() == pytest.approx(-(0.5 * math.log(0.6) + 0.5 * math.log(0.2)), rel=1e-6)


# --- ALP / MART / norm modes --------------------------------------------------------------------


@pytest.mark.parametrize(("method", "loss_fn", "key"), [("alp", alp_loss, "alp.lambda"),
                                                         ("mart", mart_loss, "mart.beta")])
def test_pairing_methods_train_on_their_attack_with_their_loss(method, loss_fn, key) -> None:
    x, y = _batch()
    table = _table()
    attack = FakeAttack(table)
    m = build_method(method, _ctx(method, **{key: 0.7}))
    m.attack = attack
    model = _model()
    out = m.compute_loss(model, x, y)
    expected = loss_fn(model(x), model(table["linf"][0]), y, 0.7)[0]
    assert attack.calls == ["linf"] and out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out.robust_correct) == {"linf"} and out.attacked == {"linf": 6}


def test_max_mode_trains_on_the_worst_norm_per_sample_and_counts_every_norm() -> None:
    x, y = _batch()
    table = _table()
    m = build_method("alp", _ctx("alp", **{"alp.norm": "max"}))
    m.attack = FakeAttack(table)
    model = _model()
    out = m.compute_loss(model, x, y)
    losses = torch.stack([table[n][1] for n in NORMS])
    picked = torch.stack([table[NORMS[int(k)]][0][i] for i, k in enumerate(losses.argmax(0))])
    expected = alp_loss(model(x), model(picked), y, catalog.PARAMS["alp.lambda"].default)[0]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out.robust_correct) == set(NORMS) and out.attacked == {n: 6 for n in NORMS}


def test_sat_mode_attacks_one_drawn_norm_and_resumes_its_stream() -> None:
    x, y = _batch()
    m = build_method("mart", _ctx("mart", seed=4, **{"mart.norm": "sat"}))
    m.attack = FakeAttack(_table())
    for _ in range(30):
        m.compute_loss(_model(), x, y)
    assert set(m.attack.calls) == set(NORMS) and len(m.attack.calls) == 30
    state = _roundtrip(m.state_dict())
    ahead = [m.compute_loss(_model(), x, y) and m.attack.calls[-1] for _ in range(10)]
    again = build_method("mart", _ctx("mart", seed=4, **{"mart.norm": "sat"}))
    again.attack = FakeAttack(_table())
    again.load_state_dict(state)
    assert [again.compute_loss(_model(), x, y) and again.attack.calls[-1] for _ in range(10)] == ahead


def test_norm_modes_are_validated() -> None:
    with pytest.raises(ValueError, match="alp.norm must be one of"):
        check_mode("l3", "alp.norm")


# --- one-step attacks ---------------------------------------------------------------------------


def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


def test_fgsm_is_one_signed_step_of_eps_clipped_to_the_box() -> None:
    x, y = _batch()
    model = _model()
    out = one_step_attack(model, x, y, "linf", 0.3, 0.3, sparsity=0.05)
    assert torch.allclose(out.x_adv, (x + 0.3 * _input_grad(model, x, y).sign()).clamp(0, 1))
    assert torch.allclose(out.loss, F.cross_entropy(model(out.x_adv), y, reduction="none"))


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.5), ("l1", 1.0)])
def test_one_step_attacks_stay_in_ball_and_box_and_raise_the_loss(norm, eps) -> None:
    x, y = _batch(n=16)
    x = 0.25 + 0.5 * x  # away from the box edges
    model = _model()
    out = one_step_attack(model, x, y, norm, eps, eps, sparsity=0.5)
    d = (out.x_adv - x).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().sum(dim=1)
    assert (size <= eps + 1e-5).all() and (out.x_adv >= 0).all() and (out.x_adv <= 1).all()
    assert (out.loss >= F.cross_entropy(model(x), y, reduction="none") - 1e-6).all()


def test_fast_at_steps_from_its_random_start_and_projects() -> None:
    x, y = _batch()
    model = _model()
    g = torch.Generator().manual_seed(0)
    start = random_point("linf", x, 0.3, g)
    assert ((start - x).abs() <= 0.3 + 1e-6).all() and not torch.equal(start, x)
    out = one_step_attack(model, x, y, "linf", 0.3, 0.375, sparsity=0.05, start=start)
    step = 0.375 * _input_grad(model, start, y).sign()
    expected = (x + (start - x + step).clamp(-0.3, 0.3)).clamp(0, 1)
    assert torch.allclose(out.x_adv, expected, atol=1e-6)


def test_fast_at_uses_its_step_factor_and_fgsm_at_its_alpha() -> None:
    x, y = _batch()
    model = _model()
    fast = build_method("fast-at", _ctx("fast-at", **{"fast.step": 1.25}))
    out = fast.compute_loss(model, x, y)
    assert out.attacked == {"linf": 6} and out.parts["ce"].item() == pytest.approx(out.loss.item())
    fgsm = build_method("fgsm-at", _ctx("fgsm-at", **{"fgsm.alpha": 1.0}))
    assert fgsm.compute_loss(model, x, y).loss.item() == pytest.approx(F.cross_entropy(model(x), y).item())


# --- VAT ----------------------------------------------------------------------------------------


def test_vat_power_iteration_finds_the_kl_hessians_top_eigenvector() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double().requires_grad_(False)
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(1, 1, 2, 2, dtype=torch.float64)
    p = F.softmax(model(x), dim=1)[0]
    hessian = lin.weight.T @ (torch.diag(p) - torch.outer(p, p)) @ lin.weight
    top = torch.linalg.eigh(hessian).eigenvectors[:, -1]
    start = torch.randn(1, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    one = vat_direction(model, x, start, 1e-4, 1).flatten()
    many = vat_direction(model, x, start, 1e-4, 30).flatten()
    assert abs(float(many @ top)) > 0.9999
    assert abs(float(one @ top)) < abs(float(many @ top))  # the iteration is doing the work
    assert float(many.norm()) == pytest.approx(1.0)


def test_vat_method_uses_the_l2_radius_and_reports_no_robust_accuracy() -> None:
    x, y = _batch()
    m = build_method("vat", _ctx("vat", **{"vat.xi": 1e-3}))
    out = m.compute_loss(_model(), x, y)
    assert out.robust_correct == {} and set(out.parts) == {"ce", "vat"} and out.parts["vat"].item() > 0
    with pytest.raises(KeyError, match="vat needs an l2 epsilon"):
        build_method("vat", MethodContext(epsilons={"linf": 0.3}, params=_ctx("vat").params, num_classes=3))


# --- free AT ------------------------------------------------------------------------------------


def _free_steps(m: FreeAT, model: nn.Module, batches, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for x, y in batches:
        out = m.compute_loss(model, x, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


def test_free_at_replays_each_batch_m_times_with_a_persistent_signed_step() -> None:
    batches = [_batch(seed=s) for s in range(7)]
    m = FreeAT(_ctx("free-at", **{"free.replays": 3}))
    model = _model()
    seen, deltas = [], []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches:
        before = None if m.delta is None else m.delta.detach().clone()
        grad = None if m.delta is None or m.delta.grad is None else m.delta.grad.clone()
        out = m.compute_loss(model, x, y)
        seen.append(m.x)
        if grad is not None:  # the previous replay's gradient moved delta by eps * sign, clipped
            deltas.append(torch.allclose(m.delta.detach(), (before + 0.3 * grad.sign()).clamp(-0.3, 0.3)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    used = [next(i for i, (bx, _) in enumerate(batches) if torch.equal(bx, s)) for s in seen]
    assert used == [0, 0, 0, 3, 3, 3, 6]
    assert deltas and all(deltas) and m.delta.detach().abs().max().item() == pytest.approx(0.3)


def test_free_at_resumes_mid_replay_exactly() -> None:
    batches = [_batch(seed=s) for s in range(8)]
    ctx = _ctx("free-at", **{"free.replays": 3})
    a, model_a = FreeAT(ctx), _model()
    full = _free_steps(a, model_a, batches)
    b, model_b = FreeAT(ctx), _model()
    head = _free_steps(b, model_b, batches[:4])
    state = _roundtrip(b.state_dict())
    c = FreeAT(ctx)
    c.load_state_dict(state)
    assert head + _free_steps(c, model_b, batches[4:]) == pytest.approx(full, rel=1e-6)


# --- distillation -------------------------------------------------------------------------------


def test_teacher_steps_leave_the_student_at_least_one_step() -> None:
    assert teacher_steps(0.5, 10) == 5 and teacher_steps(0.99, 10) == 9 and teacher_steps(0.01, 10) == 1
    with pytest.raises(ValueError, match="at least 2 optimiser steps"):
        teacher_steps(0.5, 1)


def test_distill_trains_a_teacher_at_t_then_the_student_on_its_soft_labels() -> None:
    x, y = _batch()
    T = 50.0
    ctx = _ctx("distill", total_steps=4, **{"distill.temperature": T, "distill.teacher_share": 0.5})
    m, model = Distill(ctx), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(4):
        snapshot = [p.detach().clone() for p in model.parameters()]
        out = m.compute_loss(model, x, y)
        if step < 2:
            assert m.teacher is None
            assert out.loss.item() == pytest.approx(F.cross_entropy(model(x) / T, y).item(), rel=1e-6)
        else:
            if step == 2:  # the teacher is the model as the teacher phase left it; the student starts anew
                assert all(torch.equal(p, q) for p, q in zip(m.teacher.parameters(), snapshot, strict=True))
                assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), snapshot, strict=True))
            soft = F.softmax(m.teacher(x) / T, dim=1)
            assert out.loss.item() == pytest.approx(soft_ce(model(x), soft, T).item(), rel=1e-6)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    teacher = [p.detach().clone() for p in m.teacher.parameters()]
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), teacher, strict=True))
    again = Distill(ctx)
    again.load_state_dict(_roundtrip(m.state_dict()))
    again.compute_loss(_model(seed=9), x, y)  # rebuilt from the saved weights, not the given model
    assert all(torch.equal(p, q) for p, q in zip(again.teacher.parameters(), teacher, strict=True))
