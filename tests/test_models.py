"""The model registry: names, shapes on MNIST- and CIFAR-sized inputs, normalisation inside the
model, the softplus option, argument validation and parameter counts (built on the meta device,
so the 36M-parameter WRN costs no memory and no forward pass)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from workers.contract import catalog
from workers.contract.registry import UnknownNameError
from workers.models import MODELS, Normalized, build_model, count_parameters, model_arg_names
from workers.models.activations import ACTIVATIONS

# Small variants keep CPU time low; the architecture code paths are the same as at full size.
SMALL_ARGS: dict[str, dict] = {
    "small-cnn": {},
    "preact-resnet18": {"width": 8},
    "resnet18": {},
    "wrn": {"depth": 10, "width": 1},
}
SHAPES = [(1, 28), (3, 32)]


def _build(name: str, in_channels: int, size: int, num_classes: int = 7, **extra) -> nn.Module:
    return build_model(name, num_classes=num_classes, in_channels=in_channels, input_size=size,
                       **SMALL_ARGS[name], **extra)


def test_registry_names_equal_catalog():
    assert MODELS.names() == sorted(catalog.MODELS)
    assert set(SMALL_ARGS) == set(catalog.MODELS)


def test_unknown_model_lists_available_names():
    with pytest.raises(UnknownNameError) as info:
        build_model("vgg16", num_classes=10, in_channels=3, input_size=32)
    assert isinstance(info.value, KeyError)
    for name in catalog.MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(SMALL_ARGS))
@pytest.mark.parametrize(("in_channels", "size"), SHAPES)
def test_forward_shape_and_input_gradient(name: str, in_channels: int, size: int):
    model = _build(name, in_channels, size).train()
    x = torch.rand(3, in_channels, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_small_cnn_classifier_matches_input_size():
    for size, flat in ((28, 64 * 7 * 7), (32, 64 * 8 * 8)):
        model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=size)
        assert model.classifier[1].in_features == flat
    narrow = build_model("small-cnn", num_classes=10, in_channels=1, input_size=28, channels=[4, 8],
                         hidden=16)
    assert count_parameters(narrow) == (1 * 4 * 9 + 4) + (4 * 8 * 9 + 8) + (8 * 49 * 16 + 16) + (16 * 10 + 10)


def test_resnet18_stem_follows_input_size():
    small = build_model("resnet18", num_classes=10, in_channels=3, input_size=32)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = build_model("resnet18", num_classes=10, in_channels=3, input_size=224)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)
    # The ImageNet form is exactly torchvision's ResNet-18 (same parameter names and shapes).
    reference = tv_resnet18(weights=None, num_classes=10).state_dict()
    assert {k: v.shape for k, v in large.state_dict().items()} == {k: v.shape for k, v in reference.items()}
    forced = build_model("resnet18", num_classes=5, in_channels=1, input_size=64, stem="imagenet")
    assert forced(torch.rand(2, 1, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError, match="stem"):
        build_model("resnet18", num_classes=10, in_channels=3, input_size=32, stem="tiny")


@pytest.mark.parametrize("name", sorted(SMALL_ARGS))
def test_normalisation_lives_inside_the_model(name: str):
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    torch.manual_seed(3)
    inner = _build(name, 3, 32).eval()
    torch.manual_seed(3)
    model = _build(name, 3, 32, mean=mean, std=std).eval()
    assert isinstance(model, Normalized)
    x = torch.rand(2, 3, 32, 32)
    expected = inner((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(model(x), expected, atol=1e-5)
    state = model.state_dict()
    assert torch.equal(state["normalize.mean"].flatten(), torch.tensor(mean))
    assert torch.equal(state["normalize.std"].flatten(), torch.tensor(std))
    assert model.double().normalize.std.dtype == torch.float64  # buffers move with the model


def test_no_normalisation_unless_asked_and_single_value_stats():
    assert not isinstance(_build("small-cnn", 1, 28), Normalized)
    torch.manual_seed(1)
    inner = _build("small-cnn", 1, 28).eval()
    torch.manual_seed(1)
    model = _build("small-cnn", 1, 28, mean=[0.1307], std=[0.3081]).eval()
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(model(x), inner((x - 0.1307) / 0.3081), atol=1e-5)


@pytest.mark.parametrize("name", ["preact-resnet18", "wrn"])
def test_softplus_option_changes_the_activation(name: str):
    relu = _build(name, 3, 32).eval()
    soft = _build(name, 3, 32, activation="softplus").eval()
    soft_types = {type(m) for m in soft.modules()}
    assert nn.Softplus in soft_types and nn.ReLU not in soft_types
    assert all(m.beta == 1.0 for m in soft.modules() if isinstance(m, nn.Softplus))  # reference softplus1
    sharp = _build(name, 3, 32, activation="softplus", softplus_beta=1e4).eval()
    soft.load_state_dict(relu.state_dict())
    sharp.load_state_dict(relu.state_dict())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out_relu, out_soft, out_sharp = relu(x), soft(x), sharp(x)
    assert not torch.allclose(out_relu, out_soft, atol=1e-3)  # same weights, different function
    # softplus_beta(x) -> relu(x) as beta grows: the option really is the activation.
    assert torch.allclose(out_relu, out_sharp, atol=1e-2 * out_relu.abs().max().item())


def test_wrn_depth_must_be_6n_plus_4():
    for depth in (27, 8, 4):
        with pytest.raises(ValueError, match=r"6n \+ 4"):
            build_model("wrn", num_classes=10, in_channels=3, input_size=32, depth=depth, width=1)
    with pytest.raises(ValueError, match="width"):
        build_model("wrn", num_classes=10, in_channels=3, input_size=32, depth=10, width=0)


def _wrn_parameter_count(depth: int, width: int, in_channels: int, num_classes: int) -> int:
    """WRN parameters counted from the architecture's definition (convs bias-free, BN 2 per channel)."""
    n = (depth - 4) // 6
    total, c_in = in_channels * 16 * 9, 16
    for c_out in (16 * width, 32 * width, 64 * width):
        for i in range(n):
            block_in = c_in if i == 0 else c_out
            total += 2 * block_in + block_in * c_out * 9 + 2 * c_out + c_out * c_out * 9
            total += block_in * c_out if block_in != c_out else 0
        c_in = c_out
    return total + 2 * c_in + c_in * num_classes + num_classes


def test_parameter_counts_without_a_forward():
    with torch.device("meta"):
        wrn = build_model("wrn", num_classes=10, in_channels=3, input_size=32, depth=28, width=10)
        preact = build_model("preact-resnet18", num_classes=10, in_channels=3, input_size=32)
        resnet = build_model("resnet18", num_classes=10, in_channels=3, input_size=32)
    assert count_parameters(wrn) == _wrn_parameter_count(28, 10, 3, 10)
    assert abs(count_parameters(wrn) - 36.5e6) < 0.05e6
    assert abs(count_parameters(preact) - 11.17e6) < 0.02e6
    # CIFAR stem: torchvision's count minus the 7x7 stem plus a 3x3 one.
    expected = count_parameters(tv_resnet18(weights=None, num_classes=10)) - 3 * 64 * 49 + 3 * 64 * 9
    assert count_parameters(resnet) == expected


def test_model_args_round_trip_through_json():
    args = {"width": 8, "activation": "softplus", "softplus_beta": 2.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.manual_seed(0)
    first = build_model("preact-resnet18", num_classes=10, in_channels=3, input_size=32, **args)
    torch.manual_seed(0)
    again = build_model("preact-resnet18", num_classes=10, in_channels=3, input_size=[32, 32],
                        **json.loads(json.dumps(args)))
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"depth": 10}, TypeError, "does not take depth; its args are activation, channels, hidden"),
        ({"channels": {1, 2}}, TypeError, "JSON-serialisable"),
        ({"mean": [0.5]}, ValueError, "both mean and std"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, ValueError, r"per input channel \(1\) or a single value"),
        ({"mean": [0.5], "std": [0.0]}, ValueError, "std values must be positive"),
        ({"activation": "gelu"}, ValueError, "unknown activation 'gelu'; available: relu, softplus"),
        ({"channels": [8]}, ValueError, "two positive channel counts"),
    ],
)
def test_bad_model_args_are_explained(kwargs: dict, error: type[Exception], message: str):
    with pytest.raises(error, match=message):
        build_model("small-cnn", num_classes=10, in_channels=1, input_size=28, **kwargs)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="input_size"):
        build_model("wrn", num_classes=10, in_channels=3, input_size=(32, 32, 3), depth=10, width=1)
    with pytest.raises(ValueError, match="num_classes and in_channels"):
        build_model("wrn", num_classes=0, in_channels=3, input_size=32, depth=10, width=1)
    assert model_arg_names("wrn") == ["activation", "depth", "softplus_beta", "width"]


def _orders(model: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """small-cnn's blocks in both orders (same modules): conv, act, pool and conv, pool, act."""
    f = model.features
    act_first = nn.Sequential(f[0], f[2], f[1], f[3], f[5], f[4], model.classifier)
    pool_first = nn.Sequential(*f, model.classifier)
    return act_first, pool_first


def _value_and_grad(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = net(x)
    return out.detach(), torch.autograd.grad(out.logsumexp(1).sum(), x)[0]


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_small_cnn_pool_before_activation_is_the_same_function(activation: str):
    # Channels-last small-cnn pools before its activation (cheaper there); that is exact only for
    # non-decreasing activations: a new one that is not (GELU, SiLU) must fail here.
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=(28, 28),
                        activation=activation).eval()
    x = torch.randn(16, 1, 28, 28) * 3  # wide inputs: negative maps too
    act_first, pool_first = _orders(model)
    reference = _value_and_grad(act_first, x)
    for got in (_value_and_grad(pool_first, x), _value_and_grad(model, x)):
        assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
    assert not model.pools_first()
    model.to(memory_format=torch.channels_last)
    assert model.pools_first()
    torch.testing.assert_close(model(x), reference[0], rtol=1e-5, atol=1e-5)


def test_the_order_check_fails_for_a_non_monotone_activation():
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10, in_channels=1, input_size=(28, 28)).eval()
    model.features[2] = model.features[5] = nn.GELU()  # GELU dips below zero: order matters
    x = torch.randn(16, 1, 28, 28) * 3
    act_first, pool_first = _orders(model)
    assert not torch.equal(act_first(x), pool_first(x))
