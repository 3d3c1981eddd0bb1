"""The baselines' behaviour: which examples each method trains on, how norms are sampled, resume."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from workers.attacks import AttackResult, project, steepest_step
from workers.contract import catalog
from workers.contract.norms import NORMS
from workers.methods import METHODS, MethodContext, build_method
from workers.methods.avg import AVG
from workers.methods.common import batched_forward
from workers.methods.eat import EAT
from workers.methods.max import MAX, select_max
from workers.methods.msd import MSD, l1_split, msd_attack, msd_steps
from workers.methods.sat import SAT
from workers.methods.trades import TRADES, trades_attack

EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


class FakeAttack:
    """Returns fixed adversarial batches and per-sample losses (and, when the table gives them,
    "robust at every iterate" flags) per norm; records its calls."""

    def __init__(self, table: dict[str, tuple[torch.Tensor, ...]]) -> None:
        self.table = table
        self.calls: list[tuple] = []

    def __call__(self, model, x, y, norm, eps, n_iter, *, l1_sparsity):
        self.calls.append((norm, eps, n_iter, l1_sparsity))
        x_adv, loss, *robust = self.table[norm]
        return AttackResult(x_adv=x_adv, loss=loss, robust=robust[0] if robust else None)


def _ctx(method: str, *, seed: int = 0, **params) -> MethodContext:
    return MethodContext(
        epsilons=dict(EPS), params=catalog.param_defaults(method, "mnist-5k", False) | params, num_classes=3,
        seed=seed,
    )


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _adv_table(n: int = 6, seed: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {norm: (torch.rand(n, 1, 2, 2, generator=g), torch.rand(n, generator=g)) for norm in NORMS}


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- registry -----------------------------------------------------------------------------------


def test_registry_names_are_the_catalog_methods() -> None:
    assert METHODS.names() == sorted(catalog.METHODS)


@pytest.mark.parametrize("dataset", sorted(catalog.DATASETS))
@pytest.mark.parametrize("method", catalog.METHODS)
def test_every_method_builds_from_its_catalog_defaults(method: str, dataset: str) -> None:
    info = catalog.DATASETS[dataset]
    for finetune in (False, True):
        ctx = MethodContext(
            epsilons=dict(info.epsilons), params=catalog.param_defaults(method, dataset, finetune),
            num_classes=10, finetune=finetune, total_steps=100,
        )
        assert build_method(method, ctx).name == method


def test_apgd_is_the_default_training_attack() -> None:
    from workers.attacks import apgd

    for method in ("at-linf", "at-l2", "at-l1", "sat", "avg", "max", "eat", "ramp"):
        assert METHODS.get(method)(_ctx(method)).attack is apgd


# --- single-norm AT, AVG, MAX -----------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_single_norm_at_trains_on_its_attack_with_the_configured_steps(norm: str) -> None:
    model, table = _model(), _adv_table()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    attack = FakeAttack(table)
    ctx = _ctx(f"at-{norm}", **{f"attack.steps_{norm}": 7, "attack.l1_sparsity": 0.1})
    out = METHODS.get(f"at-{norm}")(ctx, attack=attack).compute_loss(model, torch.zeros(6, 1, 2, 2), y)
    assert attack.calls == [(norm, EPS[norm], 7, 0.1)]
    with torch.no_grad():
        logits = model(table[norm][0])
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert out.robust_correct == {norm: (logits.argmax(1) == y).sum()}
    assert out.attacked == {norm: 6}


def test_avg_loss_is_the_mean_of_the_three_norms_ce() -> None:
    model, table = _model(), _adv_table()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    attack = FakeAttack(table)
    out = AVG(_ctx("avg"), attack=attack).compute_loss(model, torch.zeros(6, 1, 2, 2), y)
    assert sorted(c[0] for c in attack.calls) == sorted(NORMS)
    with torch.no_grad():
        ces = [F.cross_entropy(model(table[n][0]), y).item() for n in NORMS]
    assert out.loss.item() == pytest.approx(sum(ces) / 3, rel=1e-6)
    for norm, ce in zip(NORMS, ces, strict=True):
        assert out.parts[f"ce_{norm}"].item() == pytest.approx(ce, rel=1e-6)
    assert out.attacked == {n: 6 for n in NORMS}


def test_select_max_picks_the_highest_loss_candidate_per_sample() -> None:
    candidates = torch.arange(3.0).view(3, 1, 1).expand(3, 4, 2)  # candidate k is filled with k
    losses = torch.tensor([[5.0, 0.0, 1.0, 2.0], [1.0, 3.0, 1.0, 2.0], [0.0, 1.0, 4.0, 2.0]])
    # sample 3 ties all three: the first (l_inf) wins.
    assert select_max(candidates, losses)[:, 0].tolist() == [0.0, 1.0, 2.0, 0.0]


def test_max_computes_ce_on_the_per_sample_highest_loss_example() -> None:
    model = _model()
    g = torch.Generator().manual_seed(5)
    xs = {n: torch.rand(4, 1, 2, 2, generator=g) for n in NORMS}
    losses = {"linf": torch.tensor([3.0, 0.1, 0.2, 1.0]), "l2": torch.tensor([0.5, 2.0, 0.1, 1.0]),
              "l1": torch.tensor([0.4, 1.0, 9.0, 1.0])}
    table = {n: (xs[n], losses[n]) for n in NORMS}
    y = torch.tensor([0, 1, 2, 1])
    out = MAX(_ctx("max"), attack=FakeAttack(table)).compute_loss(model, torch.zeros(4, 1, 2, 2), y)
    x_max = torch.stack([xs["linf"][0], xs["l2"][1], xs["l1"][2], xs["linf"][3]])
    with torch.no_grad():
        expected = F.cross_entropy(model(x_max), y).item()
        for norm in NORMS:  # per-norm robust counts of each attack's own examples
            assert out.robust_correct[norm].item() == (model(xs[norm]).argmax(1) == y).sum().item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.attacked == {n: 4 for n in NORMS}


def test_batched_forward_concatenated_equals_separate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    xs = torch.rand(3, 5, 1, 2, 2)
    separate = batched_forward(model, xs, concat=False)
    assert separate.shape == (3, 5, 3)
    assert torch.allclose(batched_forward(model, xs, concat=True), separate, atol=1e-6)
    assert torch.allclose(separate[1], model(xs[1]), atol=1e-6)


# --- SAT and E-AT sampling ---------------------------------------------------------------------------


def test_sat_draws_norms_uniformly_and_attacks_the_drawn_norm() -> None:
    torch.manual_seed(11)
    method = SAT(_ctx("sat"), attack=FakeAttack(_adv_table()))
    draws = [method.draw_norm() for _ in range(3000)]
    counts = [draws.count(n) for n in NORMS]
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    # compute_loss attacks exactly the norm the generator yields next.
    expected_next = SAT(_ctx("sat"), attack=FakeAttack({}))
    expected_next.load_state_dict(method.state_dict())
    want = [expected_next.draw_norm() for _ in range(5)]
    model, y = _model(), torch.zeros(6, dtype=torch.long)
    got = []
    for _ in range(5):
        out = method.compute_loss(model, torch.zeros(6, 1, 2, 2), y)
        got.append(next(iter(out.attacked)))
    assert got == want and [c[0] for c in method.attack.calls] == want


def test_sat_stream_follows_the_run_seed_and_resumes() -> None:
    def stream(seed: int, skip: int = 0, state: dict | None = None) -> list[str]:
        torch.manual_seed(1234)  # the global torch seed must not matter: the run's seed does
        m = SAT(_ctx("sat", seed=seed), attack=FakeAttack({}))
        if state is not None:
            m.load_state_dict(state)
        return [m.draw_norm() for _ in range(30)]

    assert stream(0) == stream(0) and stream(0) != stream(1)
    m = SAT(_ctx("sat", seed=0), attack=FakeAttack({}))
    first = [m.draw_norm() for _ in range(10)]
    state = _roundtrip(m.state_dict())
    assert first + stream(5, state=state)[:20] == stream(0)


def test_eat_is_uniform_until_every_norm_was_sampled() -> None:
    method = EAT(_ctx("eat"), attack=FakeAttack({}))
    assert method.norms == ("linf", "l1")
    assert method.probabilities() == [0.5, 0.5]
    method.record(0, torch.tensor(10.0), 10)  # l_inf fully robust, l_1 never sampled
    assert method.probabilities() == [0.5, 0.5]


def test_eat_weights_are_one_minus_cumulative_robust_accuracy() -> None:
    torch.manual_seed(0)
    method = EAT(_ctx("eat"), attack=FakeAttack({}))
    method.record(0, torch.tensor(20.0), 100)
    method.record(1, torch.tensor(40.0), 50)
    method.record(0, torch.tensor(10.0), 100)  # cumulative: l_inf 30/200, l_1 40/50
    p_linf = (1 - 0.15) / ((1 - 0.15) + (1 - 0.8))
    assert method.probabilities() == pytest.approx([p_linf, 1 - p_linf])
    n = 4000
    hits = sum(method.sampler.draw(method.probabilities()) == 0 for _ in range(n))
    assert stats.binomtest(hits, n, p_linf).pvalue > 1e-3, hits / n
    method.record(0, torch.tensor(200.0), 200)  # l_inf 230/400 now
    assert method.probabilities()[0] == pytest.approx((1 - 230 / 400) / ((1 - 230 / 400) + 0.2))


def test_eat_step_records_the_attacks_any_iterate_robust_accuracy_and_resumes() -> None:
    """The statistic is the training attack's own eval-mode "misclassified at any iterate" flags
    (as in the reference's apgd_train), not the train-mode prediction on the returned point."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3, 4))  # predicts the hottest of the first three pixels
    y = torch.tensor([0, 1, 2, 0])
    onehot = F.one_hot(torch.tensor([0, 1, 2, 0]), 4).float().view(4, 1, 2, 2)
    wrong = F.one_hot(torch.tensor([1, 2, 2, 2]), 4).float().view(4, 1, 2, 2)
    # The returned l_inf points are all classified correctly, but an earlier iterate fooled two of
    # them; the l_1 points fool three, yet the attack saw all four robust at every iterate.
    robust_linf = torch.tensor([True, False, True, False])
    robust_l1 = torch.ones(4, dtype=torch.bool)
    table = {"linf": (onehot, torch.ones(4), robust_linf), "l1": (wrong, torch.ones(4), robust_l1)}
    torch.manual_seed(2)
    method = EAT(_ctx("eat"), attack=FakeAttack(table))
    seen = []
    for _ in range(12):
        out = method.compute_loss(model, torch.zeros(4, 1, 2, 2), y)
        seen.append(next(iter(out.attacked)))
    n_linf, n_l1 = seen.count("linf"), seen.count("l1")
    assert method.attacked == [4 * n_linf, 4 * n_l1]
    assert n_linf > 0 and n_l1 > 0
    assert method.correct.tolist() == [2.0 * n_linf, 4.0 * n_l1]
    assert method.probabilities() == pytest.approx([1.0, 0.0])  # l_1 looks fully robust to the attack
    # The step's own train-mode robust count (reported per epoch) is still the prediction's.
    out = method.compute_loss(model, torch.zeros(4, 1, 2, 2), y)
    assert list(out.attacked) == ["linf"] and out.robust_correct["linf"].item() == 4

    restored = EAT(_ctx("eat"), attack=FakeAttack(table))
    restored.load_state_dict(_roundtrip(method.state_dict()))
    assert restored.probabilities() == method.probabilities()
    draws = [method.sampler.draw([1, 1]) for _ in range(20)]
    assert [restored.sampler.draw([1, 1]) for _ in range(20)] == draws
    other = EAT(_ctx("eat", **{"eat.norms": "linf,l2"}), attack=FakeAttack({}))
    with pytest.raises(ValueError, match="norms"):
        other.load_state_dict(method.state_dict())


def test_eat_needs_an_attack_that_tracks_misclassification() -> None:
    x_adv = torch.zeros(4, 1, 2, 2)
    method = EAT(_ctx("eat"), attack=FakeAttack({n: (x_adv, torch.ones(4)) for n in ("linf", "l1")}))
    with pytest.raises(ValueError, match="misclassified at any iterate"):
        method.compute_loss(_model(), x_adv, torch.zeros(4, dtype=torch.long))


def test_eat_norms_are_validated() -> None:
    with pytest.raises(ValueError, match="distinct norms"):
        EAT(_ctx("eat", **{"eat.norms": "linf,l3"}), attack=FakeAttack({}))


# --- MSD ------------------------------------------------------------------------------------------


class LinearScore(nn.Module):
    """Logits (0, s(x)) with s = sum of x: the CE for label 0 grows with sum(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], dim=1)


class ScriptedSteps:
    """A fake steepest_step: per call, the candidate is delta + a scripted per-sample offset."""

    def __init__(self, script: list[dict[str, list[float]]]) -> None:
        self.script, self.i, self.calls = script, 0, []

    def __call__(self, norm, x, delta, grad, step, *, k=None, eps=None):
        self.calls.append((norm, step, k, eps))
        offset = torch.tensor(self.script[self.i][norm]).view(-1, 1)
        if norm == "l1":
            self.i += 1  # l1 is the last norm of each iteration
        return delta + offset.expand_as(delta)


def test_msd_keeps_the_highest_loss_step_per_sample_and_the_best_iterate() -> None:
    x = torch.zeros(2, 3)
    y = torch.zeros(2, dtype=torch.long)
    script = [
        # iteration 1: sample 0 -> l_inf wins (+1), sample 1 -> l_1 wins (+2)
        {"linf": [1.0, 0.1], "l2": [0.5, 0.2], "l1": [0.2, 2.0]},
        # iteration 2: every candidate lowers the loss -> the best stays iteration 1's
        {"linf": [-1.0, -0.5], "l2": [-0.2, -0.9], "l1": [-3.0, -3.0]},
    ]
    steps = ScriptedSteps(script)
    res = msd_attack(LinearScore(), x, y, dict(EPS), 2, lambda: 10, step_fn=steps)
    # per coordinate: sample 0 = +1 (linf), sample 1 = +2 (l1); iteration 2 never improves.
    assert torch.allclose(res.x_adv, torch.tensor([[1.0] * 3, [2.0] * 3]))
    expected_loss = F.cross_entropy(LinearScore()(res.x_adv), y, reduction="none")
    assert torch.allclose(res.loss, expected_loss)
    # iteration 2 started from iteration 1's per-sample winner.
    assert [c[0] for c in steps.calls] == ["linf", "l2", "l1"] * 2
    assert steps.calls[0][3] == EPS["linf"] and steps.calls[2][2] == l1_split(10.0, 10, 3)[1]


def test_msd_with_real_steps_stays_in_the_union_of_balls() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(8, 1, 4, 4)
    y = torch.randint(0, 3, (8,))
    eps = {"linf": 0.1, "l2": 0.5, "l1": 2.0}
    res = msd_attack(model, x, y, eps, 8, lambda: 10, step_fn=steepest_step)
    d = (res.x_adv - x).flatten(1)
    inside = torch.stack([d.abs().amax(1) <= eps["linf"] + 1e-6, d.norm(dim=1) <= eps["l2"] + 1e-5,
                          d.abs().sum(1) <= eps["l1"] + 1e-4])
    assert inside.any(0).all() and (res.x_adv >= 0).all() and (res.x_adv <= 1).all()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        at_adv = F.cross_entropy(model(res.x_adv), y, reduction="none")
    assert torch.allclose(res.loss, at_adv, atol=1e-5) and (at_adv > clean).all()


def test_msd_steps_scale_the_reference_steps_to_the_radii() -> None:
    cifar = msd_steps({"linf": 8 / 255, "l2": 0.5, "l1": 12.0})
    assert cifar["linf"] == pytest.approx(0.003) and cifar["l2"] == pytest.approx(0.05)
    assert l1_split(12.0, 5, 3072) == (pytest.approx(0.2), 5)  # the reference's k and move
    mnist = msd_steps(EPS)
    assert mnist["linf"] == pytest.approx(0.3 * 0.003 * 255 / 8) and mnist["l2"] == pytest.approx(0.2)
    move, k = l1_split(10.0, 20, 784)
    assert (move, k) == (pytest.approx(0.05), 17)  # k * move ~ eps_1 / 12


def test_msd_mnist_recipe_steps_are_taken_as_given() -> None:
    """robust_union's MNIST code: l_inf 0.01, l_2 0.1, and a total l_1 move of 1.0 over k_ref coordinates."""
    steps = msd_steps(EPS, {"linf": 0.01, "l2": 0.1, "l1": 1.0})
    assert steps["linf"] == 0.01 and steps["l2"] == 0.1
    assert msd_steps(EPS, {"linf": 0.01, "l2": 0.0, "l1": 0.0})["l2"] == pytest.approx(0.2)  # 0: reference
    assert l1_split(10.0, 8, 784, 1.0) == (pytest.approx(1 / 8), 8)
    ctx = _ctx("msd", **{"msd.step_linf": 0.01, "msd.step_l2": 0.1, "msd.step_l1": 1.0})
    assert MSD(ctx).step_sizes == {"linf": 0.01, "l2": 0.1, "l1": 1.0}


def test_msd_method_trains_on_the_msd_example_and_resumes_its_k_stream() -> None:
    model = _model()
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(4)
    method = MSD(_ctx("msd", **{"msd.steps": 3}), step_fn=steepest_step)
    state = _roundtrip(method.state_dict())
    out = method.compute_loss(model, x, y)
    replay = MSD(_ctx("msd", **{"msd.steps": 3}), step_fn=steepest_step)
    replay.load_state_dict(state)
    res = msd_attack(model, x, y, dict(EPS), 3, replay.draw_k_ref, step_fn=steepest_step)
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(res.x_adv), y).item(), rel=1e-6)
    assert out.robust_correct == {}


# --- TRADES --------------------------------------------------------------------------------------


def test_trades_inner_max_increases_the_kl_and_stays_in_the_ball() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.rand(8, 1, 4, 4)
    noise = 0.001 * torch.randn_like(x)
    for norm, eps in (("linf", 0.1), ("l2", 0.5), ("l1", 2.0)):
        x_adv = trades_attack(model, x, norm, eps, 10, noise)
        d = x_adv - x
        assert torch.allclose(project(norm, x, d, eps), d, atol=1e-5), norm
        with torch.no_grad():
            from workers.methods.losses import kl_per_sample

            start = kl_per_sample(model(x), model(x + project(norm, x, noise, eps)))
            end = kl_per_sample(model(x), model(x_adv))
        assert (end > start).all(), norm


def test_trades_loss_is_clean_ce_plus_beta_kl() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    method = TRADES(_ctx("trades", **{"trades.beta": 3.0, "trades.steps": 5}))
    state = _roundtrip(method.state_dict())
    out = method.compute_loss(model, x, y)
    replay = TRADES(_ctx("trades", **{"trades.beta": 3.0, "trades.steps": 5}))
    replay.load_state_dict(state)
    x_adv = trades_attack(model, x, "linf", 0.3, 5, replay.noise(x))
    from workers.methods.losses import kl_batchmean

    with torch.no_grad():
        ce, kl = F.cross_entropy(model(x), y).item(), kl_batchmean(model(x), model(x_adv)).item()
    assert out.parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out.parts["trades"].item() == pytest.approx(kl, rel=1e-5)
    assert out.loss.item() == pytest.approx(ce + 3.0 * kl, rel=1e-5)
    assert out.attacked == {"linf": 8}
