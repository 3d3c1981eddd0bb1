"""The arguments each model takes (``model_args`` of a training spec), with their bounds.

Torch-free, so the service checks a submission against them before anything runs: an unknown name,
a value of the wrong type or far beyond reason (``width: 1000000`` would allocate terabytes on a
worker) is a 422 at submission instead of a failure later on a worker. One model per entry of
``workers.contract.catalog.MODELS``; each lists exactly the keyword arguments of the model's
constructor in ``workers.models`` (besides the ones ``build_model`` fills: classes, channels, input
size) with the constructor's defaults, plus ``mean`` / ``std`` (input normalisation inside the
model). ``tests/test_model_args_contract.py`` keeps the two in step.

The upper bounds are generous for this project's datasets (the largest default, WRN-28-10, is far
inside them) and keep one model's parameters below roughly a few hundred million.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# What workers.models.activations registers (the test above checks they agree).
Activation = Literal["relu", "softplus"]
Stats = Annotated[list[float], Field(min_length=1, max_length=16)]
Channels = Annotated[int, Field(ge=1, le=512)]


class _Args(BaseModel):
    # Strict: JSON has real types, so "hidden": "256" is a client bug, as for the spec's own fields.
    model_config = ConfigDict(extra="forbid", strict=True)

    mean: Stats | None = None
    std: Stats | None = None

    @model_validator(mode="after")
    def _stats(self) -> _Args:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std for input normalisation, or neither")
        if self.mean is not None and self.std is not None:
            if not all(math.isfinite(v) for v in [*self.mean, *self.std]):
                raise ValueError("mean and std must be finite")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"std values must be positive, got {self.std}")
        return self


class SmallCnnArgs(_Args):
    channels: Annotated[list[Channels], Field(min_length=2, max_length=2)] = [32, 64]
    hidden: int = Field(default=256, ge=1, le=8192)
    activation: Activation = "relu"


class PreActResNet18Args(_Args):
    width: int = Field(default=64, ge=1, le=256)
    activation: Activation = "relu"
    softplus_beta: float = Field(default=1.0, gt=0, le=100)


class ResNet18Args(_Args):
    stem: Literal["auto", "cifar", "imagenet"] = "auto"


class WrnArgs(_Args):
    depth: int = Field(default=28, ge=10, le=70)
    width: int = Field(default=10, ge=1, le=20)
    activation: Activation = "relu"
    softplus_beta: float = Field(default=1.0, gt=0, le=100)

    @field_validator("depth")
    @classmethod
    def _six_n_plus_four(cls, v: int) -> int:
        if (v - 4) % 6 != 0:
            raise ValueError(f"wrn depth must be 6n + 4 (10, 16, 22, 28, 34, ...), got {v}")
        return v


MODEL_ARGS: dict[str, type[_Args]] = {
    "small-cnn": SmallCnnArgs,
    "preact-resnet18": PreActResNet18Args,
    "resnet18": ResNet18Args,
    "wrn": WrnArgs,
}


def _name(key: Any) -> str:
    text = str(key)
    return repr(text if len(text) <= 40 else text[:40] + "...")


def check_model_args(model: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` if model ``model`` takes them (returned unchanged); ``ValueError`` naming the
    first offending argument otherwise. A model without an entry is left to the catalog check."""
    schema = MODEL_ARGS.get(model)
    if schema is None:
        return args
    accepted = sorted(schema.model_fields)
    unknown = [k for k in args if k not in schema.model_fields]
    if unknown:
        names = ", ".join(_name(k) for k in unknown[:5])
        raise ValueError(f"model {model!r} does not take {names}; its args are {', '.join(accepted)}")
    try:
        schema.model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise ValueError(f"model_args.{where}: {msg}" if where else f"model_args: {msg}") from None
    return args
