"""APGD-CE / APGD-T with AutoAttack's standard settings (``workers.attacks.standard``): random
starts, the l_1 radius schedule, "misclassified at any iterate", grouped runs, targets, and the
exact model's last word."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from workers.attacks import apgd
from workers.attacks import standard as std
from workers.attacks.standard import (
    STANDARD,
    StandardSettings,
    apgd_ce,
    apgd_t,
    random_start,
    schedule_iterations,
)

SIDE = 8
NUM_CLASSES = 10
EPS = {"linf": 0.02, "l2": 0.2, "l1": 1.0}  # mean shift <= 0.02 / 0.025 / 0.016: centre robust, edge not


def norm_of(norm: str, delta: Tensor) -> Tensor:
    flat = delta.reshape(delta.shape[0], -1).double()
    return {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1), "l1": flat.abs().sum(1)}[norm]


class MeanPixel(nn.Module):
    """Predicts the class whose centre (k + 0.5) / 10 is nearest to the mean pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", (torch.arange(NUM_CLASSES) + 0.5) / NUM_CLASSES)
        self.calls: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(x.shape[0])
        mean = x.flatten(1).mean(dim=1, keepdim=True)
        return -200.0 * (mean - self.centres) ** 2


def points() -> tuple[Tensor, Tensor, Tensor]:
    """8 points: 4 at class centres (robust at EPS), 4 at 0.005 from a boundary (breakable)."""
    classes = torch.tensor([1, 4, 6, 8, 0, 3, 5, 7])
    offsets = torch.tensor([0.0] * 4 + [0.045] * 4)
    g = torch.Generator().manual_seed(0)
    noise = 0.01 * (2 * torch.rand(8, 1, SIDE, SIDE, generator=g) - 1)
    noise -= noise.flatten(1).mean(1)[:, None, None, None]
    x = ((classes.float() + 0.5) / NUM_CLASSES + offsets)[:, None, None, None] + noise
    return x.clamp(0, 1), classes, torch.tensor([True] * 4 + [False] * 4)


def still_correct(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("seed", range(4))
def test_random_start_is_inside_ball_and_box(norm, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 3, 5, 5, generator=g)
    x[:4] = 0.5  # room in every direction: the start lies on the sphere (l_inf, l_2)
    eps = {"linf": 0.05, "l2": 0.5, "l1": 3.0}[norm]
    start = random_start(norm, x, torch.full((16,), eps), generator=g)
    assert start.min() >= 0 and start.max() <= 1
    size = norm_of(norm, start - x)
    assert torch.all(size <= eps * (1 + 1e-5))
    if norm in ("linf", "l2"):
        torch.testing.assert_close(size[:4], torch.full((4,), eps, dtype=torch.float64), rtol=1e-5, atol=0)
    else:
        assert torch.all(size > 0)


def test_random_start_is_reproducible_from_its_generator() -> None:
    x = torch.rand(4, 1, 4, 4)
    a = random_start("l2", x, torch.full((4,), 0.3), torch.Generator().manual_seed(7))
    b = random_start("l2", x, torch.full((4,), 0.3), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_l1_radius_schedule_is_autoattacks() -> None:
    assert schedule_iterations(100) == [30, 30, 40]
    assert schedule_iterations(10) == [3, 3, 4]
    assert schedule_iterations(3) == [1, 1, 1]
    with pytest.raises(ValueError, match="n_iter >= 3"):
        schedule_iterations(2)
    assert STANDARD["l1"] == StandardSettings(restarts=5, targets=5, large_radii=True)
    assert STANDARD["linf"] == STANDARD["l2"] == StandardSettings(restarts=1, targets=9, large_radii=False)


class Scripted(nn.Module):
    """Ten-class logits scripted per call (start, then each iterate); a small input term keeps
    gradients alive. For sample 0, call 1 misclassifies with margin 0.05, call 2 with margin 0.5
    (cross-entropy ~0.97); every later iterate is correct again with a flat, higher-loss output
    (cross-entropy ~2.2). Sample 1 is always confidently correct."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 0
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        k, self.k = self.k, self.k + 1
        first = torch.full((10,), -10.0)
        first[0] = 3.0
        if k in (1, 2):
            first[0], first[1] = 1.0, 1.05 if k == 1 else 1.5
        elif k > 2:
            first = torch.zeros(10)
            first[0] = 0.1
        second = torch.full((10,), -10.0)
        second[0] = 3.0
        return torch.stack([first, second]) + 1e-3 * x.flatten(1)[:, :1]


def test_apgd_tracks_misclassification_at_any_iterate() -> None:
    model = Scripted()
    x = torch.full((2, 1, 2, 2), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    result = apgd(model, x, y, "linf", 0.1, 5)
    assert result.robust.tolist() == [False, True]
    # Sample 0: the highest-loss iterate is a late, correctly classified one; the handed-on
    # adversarial example is the most confidently misclassified iterate (call 2), not call 1.
    torch.testing.assert_close(result.x_fooled[0], model.inputs[2][0])
    assert not torch.equal(result.x_adv[0], model.inputs[2][0])
    torch.testing.assert_close(result.x_fooled[1], result.x_adv[1])  # never fooled: the best iterate


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_standard_attacks_break_exactly_the_breakable_points(norm) -> None:
    model = MeanPixel()
    x, y, robust = points()
    for attack in (apgd_ce, apgd_t):
        x_adv = attack(model, x, y, norm, EPS[norm], n_iter=20, generator=torch.Generator().manual_seed(0))
        assert torch.all(norm_of(norm, x_adv - x) <= EPS[norm] * (1 + 1e-4) + 1e-6)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert still_correct(model, x_adv, y).tolist() == robust.tolist(), attack.__name__
        torch.testing.assert_close(x_adv[robust], x[robust])  # nothing found: the clean input back


def test_runs_go_together_when_few_points_remain() -> None:
    model = MeanPixel()
    x, y, _ = points()
    x, y = x[:4], y[:4]  # all robust: every run happens
    settings = StandardSettings(restarts=3, targets=5, large_radii=False)
    apgd_t(model, x, y, "linf", EPS["linf"], n_iter=3, settings=settings, batch_size=8)
    # The clean ranking pass (4), targets in pairs (2 x 4 = 8; start, 3 iterates and the exact
    # check: 5 calls a pair), the fifth alone (4).
    assert model.calls.count(8) == 2 * 5 and set(model.calls) == {4, 8}
    model.calls.clear()
    apgd_t(model, x, y, "linf", EPS["linf"], n_iter=3, settings=settings, batch_size=4)
    assert set(model.calls) == {4}  # a batch of 4 leaves no room for grouping
    model.calls.clear()
    apgd_ce(model, x, y, "linf", EPS["linf"], n_iter=3, settings=settings, batch_size=8)
    # The first restart alone (start, 3 iterates, check: 4 points), then restarts 2-3 together.
    assert model.calls[:5] == [4] * 5 and model.calls[5:10] == [8] * 5


def test_grouping_does_not_change_what_is_found() -> None:
    model = MeanPixel()
    x, y, robust = points()
    for norm in ("linf", "l1"):
        one, many = (apgd_t(model, x, y, norm, EPS[norm], n_iter=10, batch_size=size,
                            generator=torch.Generator().manual_seed(1)) for size in (1, 64))
        expected = robust.tolist()
        assert still_correct(model, one, y).tolist() == still_correct(model, many, y).tolist() == expected


def test_targets_are_the_second_to_kth_largest_clean_logits(monkeypatch) -> None:
    seen: list[Tensor] = []
    real = std.apgd_run

    def recording(*args, y_target=None, **kwargs):
        seen.append(y_target.clone())
        return real(*args, y_target=y_target, **kwargs)

    monkeypatch.setattr(std, "apgd_run", recording)
    model = MeanPixel()
    x, y, _ = points()
    x, y = x[:2], y[:2]  # centre points of classes 1 and 4: the runner-up classes are the neighbours
    apgd_t(model, x, y, "linf", EPS["linf"], n_iter=3, settings=StandardSettings(1, 3, False), batch_size=2)
    with torch.no_grad():
        ranked = model(x).argsort(dim=1, descending=True)
    targets = torch.cat(seen)
    assert targets.tolist() == torch.cat([ranked[:, 1], ranked[:, 2], ranked[:, 3]]).tolist()
    assert not (targets.view(3, 2) == y).any()


class AlwaysWrong(nn.Module):
    """A lying twin: every input is class 0 (so every point looks fooled from the start)."""

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.zeros(x.shape[0], NUM_CLASSES) + 1e-3 * x.flatten(1).mean(1, keepdim=True)
        logits[:, 0] += 5.0
        return logits


def test_the_exact_model_has_the_last_word() -> None:
    exact = MeanPixel()
    x, y, robust = points()
    x_adv = apgd_ce(AlwaysWrong(), x, y, "l2", EPS["l2"], n_iter=5, exact=exact)
    # Every candidate the twin offered was re-checked: the robust points stay robust.
    assert still_correct(exact, x_adv, y)[robust].all()
    torch.testing.assert_close(x_adv[robust], x[robust])


def test_one_host_read_per_group_of_runs(monkeypatch) -> None:
    reads: list[str] = []
    original = torch.Tensor.nonzero

    def counted(self, *args, **kwargs):
        reads.append("nonzero")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "nonzero", counted)
    model = MeanPixel()
    x, y, _ = points()
    apgd_t(model, x[:4], y[:4], "linf", EPS["linf"], n_iter=10, settings=StandardSettings(1, 5, False),
           batch_size=8)
    assert len(reads) == 3  # target 1, targets 2-3, targets 4-5: none inside the 10-iteration loops


def test_sharded_runs_equal_one_batch_and_restore_the_thread_count() -> None:
    from workers.attacks.parallel import sharded, shards

    assert shards(100, 2) == [slice(0, 50), slice(50, 100)]
    assert shards(10, 2) == [slice(0, 10)]  # shards below MIN_SHARD do not pay
    assert shards(0, 4) == [slice(0, 0)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))
    model.eval()
    x = torch.rand(40, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, NUM_CLASSES, (40,), generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    for norm in ("linf", "l2", "l1"):
        runs = [std.apgd_run(model, x, y, norm, EPS[norm] * 5, 10, loss="ce", large_radii=norm == "l1",
                             generator=torch.Generator().manual_seed(3), workers=w) for w in (1, 3)]
        for field in ("x_adv", "loss", "robust", "x_fooled"):
            torch.testing.assert_close(getattr(runs[0], field), getattr(runs[1], field), atol=1e-5, rtol=1e-5)
    assert torch.get_num_threads() == threads

    def boom(s: slice):
        raise RuntimeError(f"shard {s.start} failed")

    with pytest.raises(RuntimeError, match="failed"):
        sharded(boom, 40, 2)
    assert torch.get_num_threads() == threads
