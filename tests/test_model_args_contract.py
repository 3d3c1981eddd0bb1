"""The torch-free model-args contract (``workers.contract.model_args``, what the service checks at
submission) agrees with the models themselves: the same argument names as each constructor, the
same defaults, the same activations; and what the contract accepts at its bounds' low end builds."""

from __future__ import annotations

import inspect

import pytest

from workers.contract import catalog
from workers.contract.model_args import MODEL_ARGS, check_model_args
from workers.models import build_model, model_arg_names
from workers.models.activations import ACTIVATIONS
from workers.models.registry import MODELS


def test_every_model_of_the_catalog_has_an_entry() -> None:
    assert set(MODEL_ARGS) == set(catalog.MODELS) == set(MODELS.names())


@pytest.mark.parametrize("name", catalog.MODELS)
def test_the_contract_lists_the_constructor_s_args_and_defaults(name: str) -> None:
    schema = MODEL_ARGS[name]
    assert set(schema.model_fields) - {"mean", "std"} == set(model_arg_names(name))
    params = inspect.signature(MODELS.get(name)).parameters
    for arg in model_arg_names(name):
        default = params[arg].default
        expected = list(default) if isinstance(default, tuple) else default
        assert schema.model_fields[arg].default == expected, (name, arg)


def test_the_activations_are_the_registered_ones() -> None:
    for name, schema in MODEL_ARGS.items():
        if "activation" in schema.model_fields:
            allowed = schema.model_fields["activation"].annotation.__args__  # type: ignore[union-attr]
            assert set(allowed) == set(ACTIVATIONS.names()), name


@pytest.mark.parametrize("name,args", [
    ("small-cnn", {"channels": [1, 1], "hidden": 1, "activation": "softplus", "mean": [0.5], "std": [0.25]}),
    ("preact-resnet18", {"width": 1, "activation": "softplus", "softplus_beta": 2.0}),
    ("wrn", {"depth": 10, "width": 1}),
    ("resnet18", {"stem": "cifar"}),
])
def test_what_the_contract_accepts_builds(name: str, args: dict) -> None:
    check_model_args(name, args)
    model = build_model(name, num_classes=10, in_channels=1, input_size=28, **args)
    assert sum(p.numel() for p in model.parameters()) > 0
