"""The sparse random search (``workers.attacks.sparse``): its budget stays inside the ball and the
box, it searches (keeps what lowers the margin), it needs no gradient, and as a suite stage it
finds what gradient attacks behind a masked model cannot."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from workers.attacks import sparse as sp
from workers.attacks.sparse import sparse_budget, sparse_search, swap_count
from workers.evaluation import evaluate
from workers.evaluation.suites import threat_model_violation

SIDE = 16
D = SIDE * SIDE


class TwoPixelTrigger(nn.Module):
    """Class 0 unless two fixed pixels are both near white: class 1's logit is their sum against a
    constant 1.6, so lighting one of them lowers the margin and lighting both flips the decision.
    Zero input gradient (the sum is read off a detached copy): only a search can find them."""

    def __init__(self, a: int = 3 * SIDE + 5, b: int = 11 * SIDE + 2) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        flat = x.detach().flatten(1)
        trigger = flat[:, self.a] + flat[:, self.b]
        others = torch.full((len(x), 8), -5.0)  # ten classes: APGD-T and FAB-T need their targets
        logits = torch.cat([torch.full_like(trigger, 1.6)[:, None], trigger[:, None], others], dim=1)
        return logits + 0 * x.flatten(1)[:, :10]


class Changed(nn.Module):
    """Fooled by any change at all: class 1 wins as soon as the input differs from ``reference``."""

    def __init__(self, reference: Tensor) -> None:
        super().__init__()
        self.register_buffer("reference", reference)

    def forward(self, x: Tensor) -> Tensor:
        moved = (x - self.reference[: len(x)]).flatten(1).abs().sum(1)
        return torch.stack([torch.full_like(moved, 1e-6), moved], dim=1)


class Blind(nn.Module):
    """Ignores its input: always class 0, with a wide margin. Nothing can fool it."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tensor([5.0, 0.0]).expand(len(x), 2)


def grey(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.2 * torch.rand(n, 1, SIDE, SIDE, generator=g)


@pytest.mark.parametrize(("norm", "eps", "k"), [
    ("l1", 10.0, 10), ("l1", 9.999999999, 10), ("l1", 10.5, 10), ("l1", 0.9, 0),
    ("l2", 2.0, 4), ("l2", 1.99, 3), ("l2", 0.5, 0), ("linf", 0.3, 0), ("linf", 8 / 255, 0),
])
def test_the_budget_is_the_largest_inside_the_ball(norm: str, eps: float, k: int) -> None:
    assert sparse_budget(norm, eps) == k
    assert sparse_budget("l1", 1000.0, d=64) == 64  # capped by the input's size


def test_swap_count_shrinks_from_half_to_one() -> None:
    counts = [swap_count(10, q, 1000) for q in range(1000)]
    assert counts[0] == 5 and counts[-1] == 1
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    assert all(1 <= c <= 10 for c in counts)
    assert swap_count(1, 0, 10) == 1


@pytest.mark.parametrize(("norm", "eps"), [("l1", 10.0), ("l1", 3.5), ("l2", 2.0), ("l2", 1.3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_returned_point_is_inside_the_ball_and_the_box(norm: str, eps: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, SIDE, SIDE, generator=g)  # pixels anywhere in [0, 1], some near each end
    x[0] = 0.0
    x[1] = 1.0
    y = torch.zeros(6, dtype=torch.long)
    x_adv = sparse_search(Changed(x), x, y, norm, eps, queries=5, seed=seed)
    assert threat_model_violation(x, x_adv, norm, eps) is None
    moved = (x_adv - x).flatten(1)
    assert (moved != 0).any(dim=1).all()  # every point was fooled, so every point moved...
    assert ((moved != 0).sum(dim=1) <= sparse_budget(norm, eps)).all()  # ...on at most k coordinates
    assert ((x_adv == 0) | (x_adv == 1) | (x_adv == x)).all()  # changed coordinates go to an end


def test_the_search_finds_a_two_pixel_trigger_without_gradients() -> None:
    x = grey(4)
    y = torch.zeros(4, dtype=torch.long)
    model = TwoPixelTrigger()
    x_adv = sparse_search(model, x, y, "l1", 2.0, queries=3000, seed=0)
    assert (model(x_adv).argmax(1) == 1).all()
    assert threat_model_violation(x, x_adv, "l1", 2.0) is None


def test_the_search_keeps_what_lowers_the_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation guard: a search that never keeps a better candidate must hit both pixels in one
    draw, which 3,000 queries almost never do; the real search finds all four points."""
    real = sp.margin
    x, y = grey(4), torch.zeros(4, dtype=torch.long)
    # nothing is ever "better"
    monkeypatch.setattr(sp, "margin", lambda logits, labels: real(logits, labels) * 0 + 1.0)
    stuck = sparse_search(TwoPixelTrigger(), x, y, "l1", 2.0, queries=3000, seed=0)
    assert (TwoPixelTrigger()(stuck).argmax(1) == 1).sum() <= 1


def test_a_model_that_cannot_be_fooled_gets_its_inputs_back() -> None:
    x, y = grey(5), torch.zeros(5, dtype=torch.long)
    assert torch.equal(sparse_search(Blind(), x, y, "l1", 10.0, queries=200, seed=0), x)


def test_same_seed_same_points_another_seed_another_search() -> None:
    x, y = grey(3), torch.zeros(3, dtype=torch.long)
    model = Changed(x)
    first = sparse_search(model, x, y, "l1", 4.0, queries=3, seed=7)
    assert torch.equal(first, sparse_search(model, x, y, "l1", 4.0, queries=3, seed=7))
    assert not torch.equal(first, sparse_search(model, x, y, "l1", 4.0, queries=3, seed=8))


def test_batches_cover_every_point() -> None:
    x, y = grey(7), torch.zeros(7, dtype=torch.long)
    x_adv = sparse_search(Changed(x), x, y, "l2", 2.0, queries=2, seed=0, batch_size=3)
    assert x_adv.shape == x.shape and ((x_adv - x).flatten(1) != 0).any(dim=1).all()


def test_nothing_to_search_under_linf_or_a_radius_below_one_coordinate() -> None:
    x, y = grey(2), torch.zeros(2, dtype=torch.long)
    assert torch.equal(sparse_search(Changed(x), x, y, "linf", 0.3, queries=10), x)
    assert torch.equal(sparse_search(Changed(x), x, y, "l2", 0.9, queries=10), x)


@pytest.mark.parametrize(("kwargs", "match"), [({"queries": 0}, "at least one query"),
                                               ({"queries": 5, "batch_size": 0}, "batch_size")])
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    x, y = grey(1), torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        sparse_search(Blind(), x, y, "l1", 2.0, **kwargs)


def test_strict_breaks_what_standard_plus_cannot_see() -> None:
    """Behind zero input gradients and a trigger two specific pixels wide, AutoAttack's composition
    (APGD-CE, APGD-T, FAB-T, Square) leaves every point robust; ``strict`` adds the sparse search,
    which finds the trigger for every point. On l_inf ``strict`` is ``standard+``."""
    x, y = grey(4), torch.zeros(4, dtype=torch.long)
    model = TwoPixelTrigger()
    plus = evaluate(model, (x, y), {"l1": 2.0}, suite="standard+", precision="fp32", steps=30)
    strict = evaluate(model, (x, y), {"l1": 2.0}, suite="strict", precision="fp32", steps=30)
    assert plus.robust["l1"].all()
    assert not strict.robust["l1"].any()
    assert list(strict.metrics()["attacks"]["l1"]) == ["apgd-ce", "apgd-t", "aa-fab-t", "aa-square", "sparse"]


def test_the_iterations_check_reruns_the_sparse_search_at_ten_times_its_queries() -> None:
    """At 3 steps the search gets 300 queries and finds few triggers; the 10x check gives it 3,000 and
    breaks every point left, so the check fails: the sparse stage is re-run, with its budget scaled.
    Under ``standard+`` (no sparse stage) the same check moves nothing: the gradient stages cannot."""
    x, y = grey(8), torch.zeros(8, dtype=torch.long)
    model = TwoPixelTrigger()
    strict = evaluate(model, (x, y), {"l1": 2.0}, suite="strict", precision="fp32", steps=3, checks=8)
    left = int(strict.robust["l1"].sum())
    assert left >= 2, "300 queries found nearly every trigger: the test no longer separates 1x from 10x"
    check = strict.metrics()["checks"]["iterations"]["l1"]
    assert check | {"n": left, "steps": 30, "moved": left, "status": "failed"} == check
    plus = evaluate(model, (x, y), {"l1": 2.0}, suite="standard+", precision="fp32", steps=3, checks=8)
    assert plus.metrics()["checks"]["iterations"]["l1"]["moved"] == 0
