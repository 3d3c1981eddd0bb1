"""The unseen adversaries: images in [0, 1] of the input's shape for any size, every parameter
inside its budget and the image exactly what those parameters render, identity at eps = 0,
seeded determinism, no host reads that grow with the iterations, and real strength: on a small
trained MNIST model each attack beats random parameters of the same budget."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from workers.attacks.common import per_sample
from workers.attacks.unseen import UNSEEN, UnseenResult, elastic, fog, gabor, jpeg, snow, unseen_attack
from workers.contract.unseen import BUDGETS, FAMILIES, UNSEEN_ATTACKS, budgets_for, family_of
from workers.datasets import load_tensors

TOL = 1e-5


def tiny_cnn(channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10),
    )


@pytest.fixture(scope="module")
def mnist_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained briefly on 2,000 mnist-5k points, and 96 test points it mostly gets right."""
    torch.manual_seed(0)
    x, y = load_tensors("mnist-5k", "train", 2000)
    model = tiny_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(3):
        for start in range(0, len(x), 50):
            optimiser.zero_grad()
            F.cross_entropy(model(x[start:start + 50]), y[start:start + 50]).backward()
            optimiser.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    xt, yt = load_tensors("mnist-5k", "test", 96)
    return model, xt, yt


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rerender(name: str, x: torch.Tensor, result: UnseenResult, eps: torch.Tensor) -> torch.Tensor:
    """The image the returned parameters render, through each module's own renderer."""
    p = result.params
    renders = {
        "jpeg-linf": lambda: jpeg.render(x, p[0]),
        "jpeg-l1": lambda: jpeg.render(x, p[0]),
        "fog": lambda: fog.render(x, p, eps),
        "snow": lambda: snow.render(x, p[0], p[1][:1], eps),
        "gabor": lambda: gabor.render(x, p[0], p[2], eps),
        "elastic": lambda: elastic.render(x, p[0]),
    }
    return renders[name]()


def budget_violation(name: str, result: UnseenResult, eps: torch.Tensor) -> str | None:
    """Why the returned parameters are outside the attack's budget (None when inside)."""
    p = result.params
    e = eps.double()
    if name == "jpeg-linf":
        size = p[0].double().abs().amax(dim=1)
        return None if torch.all(size <= e * (1 + TOL) + TOL) else f"l_inf {size.max():.6g}"
    if name == "jpeg-l1":
        size = p[0].double().abs().sum(dim=1)
        if not torch.all(size <= e * (1 + TOL) + TOL):
            return f"l_1 {size.max():.6g}"
        return None if p[0].abs().max() <= jpeg.L1_COORDINATE_CAP + TOL else "coordinate above the cap"
    if name == "fog":
        return None if all(o.min() >= 0 and o.max() <= 1 for o in p) else "offset outside [0, 1]"
    if name == "snow":
        blocks = F.avg_pool2d(p[0], snow.BLOCK, ceil_mode=True)
        if p[0].min() < 0 or p[0].max() > 1:
            return "intensity outside [0, 1]"
        return None if blocks.max() <= snow.FLAKE_BUDGET + TOL else f"block mean {blocks.max():.6g}"
    if name == "gabor":
        values, mask = p[0], p[1]
        if values.abs().max() > 1 + TOL:
            return "value outside [-1, 1]"
        return None if torch.all(values[mask == 0] == 0) else "value off the sparse grid"
    if name == "elastic":
        size = p[0].double().abs().flatten(1).amax(dim=1)
        return None if torch.all(size <= e * (1 + TOL) + TOL) else f"flow {size.max():.6g} px"
    raise AssertionError(name)


def test_the_registry_holds_exactly_the_contracts_names():
    assert sorted(UNSEEN_ATTACKS) == UNSEEN.names()
    for family in FAMILIES:
        assert sorted(BUDGETS[family]) == sorted(UNSEEN_ATTACKS)
        assert all(b.eps > 0 and b.source for b in BUDGETS[family].values())


def test_families_by_image_size():
    assert [family_of(28, 28), family_of(32, 32), family_of(224, 224)] == ["mnist", "cifar", "imagenet"]
    assert budgets_for(32, 32)["jpeg-linf"] == BUDGETS["cifar"]["jpeg-linf"].eps
    with pytest.raises(ValueError):
        family_of(0, 5)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(name=st.sampled_from(UNSEEN_ATTACKS), channels=st.sampled_from([1, 3]), height=st.integers(5, 40),
       width=st.integers(5, 40), scale=st.floats(0.0, 2.0), per_sample_eps=st.booleans(),
       steps=st.integers(0, 3))
def test_outputs_are_images_of_the_same_shape_inside_the_budget(name, channels, height, width, scale,
                                                               per_sample_eps, steps):
    torch.manual_seed(1)
    x, y = torch.rand(3, channels, height, width), torch.randint(0, 10, (3,))
    eps = budgets_for(height, width)[name] * scale
    radius = eps * torch.tensor([0.0, 0.5, 1.0]) if per_sample_eps else eps
    result = unseen_attack(name, tiny_cnn(channels), x, y, radius, steps=steps, generator=seeded())
    assert result.x_adv.shape == x.shape and not result.x_adv.requires_grad
    assert torch.isfinite(result.x_adv).all() and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    e = per_sample(radius, x)
    assert budget_violation(name, result, e) is None
    assert torch.allclose(rerender(name, x, result, e), result.x_adv, atol=1e-5)


@pytest.mark.parametrize("name", UNSEEN_ATTACKS)
@pytest.mark.parametrize("channels", [1, 3])
def test_eps_zero_is_the_identity(name, channels):
    torch.manual_seed(2)
    x, y = torch.rand(4, channels, 19, 26), torch.randint(0, 10, (4,))
    result = unseen_attack(name, tiny_cnn(channels), x, y, 0.0, steps=3, generator=seeded())
    assert torch.allclose(result.x_adv, x, atol=1e-5)


@pytest.mark.parametrize("name", UNSEEN_ATTACKS)
def test_the_budget_check_catches_an_oversized_perturbation(name):
    """The test's own budget check fails on parameters pushed past the budget."""
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 16, 16), torch.randint(0, 10, (2,))
    eps = torch.full((2,), budgets_for(16, 16)[name])
    result = unseen_attack(name, tiny_cnn(3), x, y, eps, steps=1, generator=seeded())
    p = [t.clone() for t in result.params]
    if name == "gabor":
        p[0] = p[0] + (1 - p[1]) * 0.5  # values off the sparse grid
    elif name == "snow":
        p[0] = torch.ones_like(p[0])
    elif name == "fog":
        p[0] = p[0] + 2
    else:
        p[0] = p[0] * 0 + 3 * eps.view(-1, *([1] * (p[0].ndim - 1)))
    assert budget_violation(name, UnseenResult(result.x_adv, p), eps) is not None


@pytest.mark.parametrize("name", UNSEEN_ATTACKS)
def test_a_seed_fixes_the_result_and_another_seed_changes_it(name):
    torch.manual_seed(4)
    x, y = torch.rand(4, 3, 24, 24), torch.randint(0, 10, (4,))
    model, eps = tiny_cnn(3), budgets_for(24, 24)[name]
    a = unseen_attack(name, model, x, y, eps, steps=2, generator=seeded(7)).x_adv
    torch.manual_seed(99)  # the global stream must not matter
    b = unseen_attack(name, model, x, y, eps, steps=2, generator=seeded(7)).x_adv
    c = unseen_attack(name, model, x, y, eps, steps=2, generator=seeded(8)).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", UNSEEN_ATTACKS)
def test_the_attack_beats_random_parameters_of_the_same_budget(mnist_model, name):
    """steps = 0 scores only the random start: random parameters of the same budget."""
    model, x, y = mnist_model
    eps = BUDGETS["mnist"][name].eps
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
    random = unseen_attack(name, model, x, y, eps, steps=0, generator=seeded()).x_adv
    attacked = unseen_attack(name, model, x, y, eps, steps=20, generator=seeded()).x_adv
    with torch.no_grad():
        random_acc = (model(random).argmax(1) == y).float().mean()
        attacked_acc = (model(attacked).argmax(1) == y).float().mean()
    assert clean > 0.8
    assert attacked_acc < random_acc - 0.1, (float(clean), float(random_acc), float(attacked_acc))


def test_jpeg_decodes_one_coefficient_by_hand():
    """A luma DC variable of 2 moves the DC coefficient by one quantisation step (16): every pixel
    of that 8x8 block by 16 / 8 = 2 grey levels, on every RGB channel; a Cr DC variable moves red
    by 1.402 times its step (17 / 8 levels) and leaves green's and blue's ratios to JFIF."""
    n_luma, n_chroma = jpeg.layout(3, 16, 16)
    v = torch.zeros(1, 64 * (n_luma + 2 * n_chroma), dtype=torch.float64)
    v[0, 0] = 2.0
    delta = jpeg.decode(v, 3, 16, 16) * 255
    assert torch.allclose(delta[0, :, :8, :8], torch.full((3, 8, 8), 2.0, dtype=torch.float64))
    assert torch.allclose(delta[0, :, 8:, :], torch.zeros(3, 8, 16, dtype=torch.float64), atol=1e-12)
    v.zero_()
    v[0, 64 * (n_luma + n_chroma)] = 2.0  # Cr's DC: one chroma block covers all 16x16 pixels
    delta = jpeg.decode(v, 3, 16, 16) * 255
    step = 17 / 8
    assert torch.allclose(delta[0, 0], torch.full((16, 16), 1.402 * step, dtype=torch.float64))
    assert torch.allclose(delta[0, 1], torch.full((16, 16), -0.714136 * step, dtype=torch.float64))
    assert torch.allclose(delta[0, 2], torch.zeros(16, 16, dtype=torch.float64), atol=1e-12)


def test_jpeg_pads_to_sixteen_and_crops_centred():
    assert jpeg.layout(3, 17, 30) == (4 * 4, 2 * 2)
    assert jpeg.layout(1, 28, 28) == (16, 0)
    v = torch.ones(2, 64 * 16)
    assert jpeg.decode(v, 1, 28, 28).shape == (2, 1, 28, 28)


def test_the_l1_oracle_spends_the_budget_on_the_largest_gradients():
    grad = torch.tensor([[0.1, -3.0, 2.0, 0.0, -0.5]])
    s = jpeg._l1_lmo(grad, torch.tensor([4.5]), cap=2.0)
    assert torch.allclose(s, torch.tensor([[0.0, -2.0, 2.0, 0.0, -0.5]]))


def test_fog_map_is_a_normalised_diamond_square_map():
    size = 16
    offsets = [torch.full((2, 2**i, 2**i), 0.5) for i in range(int(math.log2(size))) for _ in range(3)]
    flat = fog.fog_map(offsets, size)
    assert flat.shape == (2, 1, size, size)
    assert torch.allclose(flat, torch.zeros_like(flat))  # zero noise: a constant map
    offsets[0] = torch.rand(2, 1, 1)
    bumpy = fog.fog_map(offsets, size)
    assert bumpy.amin() == 0 and torch.allclose(bumpy.amax(dim=(1, 2, 3)), torch.ones(2))


def test_snow_cap_scales_only_blocks_over_budget():
    v = torch.zeros(1, 7, 16, 8)
    v[..., :8, :] = 0.9  # the top block is over the cap, the bottom one is empty
    capped = snow.cap_blocks(v)
    assert torch.allclose(capped[..., :8, :].mean(), torch.tensor(snow.FLAKE_BUDGET))
    assert torch.equal(capped[..., 8:, :], v[..., 8:, :])
    low = torch.full((1, 7, 8, 8), 0.1)
    assert torch.equal(snow.cap_blocks(low), low)


def test_elastic_moves_a_shifted_image_by_whole_pixels():
    """A uniform flow of one pixel along x samples each pixel's right neighbour."""
    x = torch.rand(1, 1, 30, 30, dtype=torch.float64)
    flow = torch.zeros(1, 2, 30, 30, dtype=torch.float64)
    flow[:, 0] = 1.0
    out = elastic.render(x, flow)
    assert torch.allclose(out[..., :-1], x[..., 1:], atol=1e-9)


class ModeProbe(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return self.inner(x)


@pytest.mark.parametrize("name", UNSEEN_ATTACKS)
def test_eval_mode_restored_and_parameter_grads_untouched(name):
    x, y = torch.rand(3, 1, 20, 20), torch.randint(0, 10, (3,))
    probe = ModeProbe(tiny_cnn(1))
    probe.train()
    unseen_attack(name, probe, x, y, budgets_for(20, 20)[name], steps=2, generator=seeded())
    assert probe.seen and not any(probe.seen)
    assert all(m.training for m in probe.modules())
    assert all(p.grad is None for p in probe.parameters())


SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy")


@pytest.mark.parametrize("name", UNSEEN_ATTACKS)
def test_host_reads_do_not_grow_with_the_iterations(name, monkeypatch):
    """Set-up may read its own CPU random numbers; the loop may not read anything."""
    x, y = torch.rand(3, 3, 20, 20), torch.randint(0, 10, (3,))
    model = tiny_cnn(3)
    calls: list[str] = []
    for method in SYNC_METHODS:
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _name=method, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    counts = []
    for steps in (1, 6):
        calls.clear()
        unseen_attack(name, model, x, y, budgets_for(20, 20)[name], steps=steps, generator=seeded())
        counts.append(len(calls))
    calls.clear()
    torch.ones(1).item()  # the probe sees reads
    seen = list(calls)
    monkeypatch.undo()
    assert counts[0] == counts[1], counts
    assert seen == ["item"]
