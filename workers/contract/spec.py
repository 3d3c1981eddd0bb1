"""Training and evaluation specs: validated, then resolved against the catalog's defaults.

Torch-free. ``TrainSpec`` is what a user writes (most fields optional). ``TrainSpec.resolve()`` is
the one resolution: it fills every default (the dataset's, the method's, fine-tuning's) and, when
fine-tuning without a ``model``, takes the checkpoint's architecture from its ``meta.json`` (read as
plain JSON; a checkpoint whose metadata cannot be read needs ``model`` named). It returns a
``ResolvedSpec``: a distinct type whose filled fields are required, so "resolved" survives JSON
(``ResolvedSpec.model_validate(stored)``) and everything downstream -- the training loop, the
sweep runner, the CLI, the service's stored specs and trial rows, the job driver -- takes that
type and never resolves again.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from workers.contract import catalog
from workers.contract.layout import CheckpointMetaError, read_checkpoint_meta
from workers.contract.model_args import check_model_args
from workers.contract.norms import NORMS

ParamValue = float | int | str | bool

# Job-spec fields that are the service's business (where and how often to run), not the science's.
SERVICE_FIELDS = ("kind", "resources", "max_retries")


class Resources(BaseModel):
    """What a training run asks Ray for: Ray Train workers (not DataLoader workers)."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(default=1, ge=1, le=64)
    cpus_per_worker: float = Field(default=1.0, gt=0, le=256)
    use_gpu: bool = False


def _check_epsilons(value: dict[str, float]) -> dict[str, float]:
    for norm, eps in value.items():
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
        if not eps > 0:
            raise ValueError(f"epsilon for {norm} must be positive, got {eps}")
    return value


def _check_precision(value: str) -> str:
    if value not in catalog.PRECISIONS:
        raise ValueError(f"unknown precision {value!r}; use one of {', '.join(catalog.PRECISIONS)}")
    return value


def _check_train_precision(value: str) -> str:
    if value not in catalog.TRAIN_PRECISIONS:
        names = ", ".join(catalog.TRAIN_PRECISIONS)
        raise ValueError(f"unknown train_precision {value!r}; use one of {names}")
    return value


# A path a spec names (checked against the data roots by the service): as long as the service allows.
MAX_PATH_CHARS = 4096
PathText = Annotated[str, Field(max_length=MAX_PATH_CHARS)]

# Radii per norm and the evaluation's arithmetic, checked the same way in every spec that has them.
Epsilons = Annotated[dict[str, float], AfterValidator(_check_epsilons)]
Precision = Annotated[str, AfterValidator(_check_precision)]
TrainPrecision = Annotated[str, AfterValidator(_check_train_precision)]


def coerce_param(key: str, value: Any) -> ParamValue:
    """Validate one ``params`` entry against the catalog; strings from the CLI are converted."""
    if key not in catalog.PARAMS:
        raise ValueError(f"unknown param {key!r}; known: {', '.join(sorted(catalog.PARAMS))}")
    p = catalog.PARAMS[key]
    if p.type is bool:
        if isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"param {key!r} expects a boolean, got {value!r}")
            value = value.lower() in ("1", "true", "yes", "on")
        elif not isinstance(value, bool):
            raise ValueError(f"param {key!r} expects a boolean, got {value!r}")
    elif p.type in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"param {key!r} expects a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an int of hundreds of digits: no float holds it
            raise ValueError(f"param {key!r} is out of range") from None
        except (TypeError, ValueError):
            raise ValueError(f"param {key!r} expects a number, got {value!r}") from None
        if p.type is int:
            if number != int(number):
                raise ValueError(f"param {key!r} expects an integer, got {value!r}")
            value = int(number)
        else:
            value = number
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"param {key!r} must be finite")
        if p.minimum is not None and number < p.minimum:
            raise ValueError(f"param {key!r} must be >= {p.minimum}, got {value}")
        if p.maximum is not None and number > p.maximum:
            raise ValueError(f"param {key!r} must be <= {p.maximum}, got {value}")
    else:
        value = str(value)
    if p.choices is not None and value not in p.choices:
        raise ValueError(f"param {key!r} must be one of {', '.join(map(str, p.choices))}, got {value!r}")
    return value


# The fields of a TrainSpec that name a catalog entry, and the names each accepts.
CATALOG_FIELDS: dict[str, Collection[str]] = {
    "method": catalog.METHODS, "dataset": catalog.DATASETS, "model": catalog.MODELS,
    "schedule": catalog.SCHEDULES, "optimizer": catalog.OPTIMIZERS,
}


class TrainSpec(BaseModel):
    """A training (or fine-tuning, with ``init_from``) run. None means: take the default."""

    model_config = ConfigDict(extra="forbid")

    method: str = "ramp"
    dataset: str = "mnist-5k"
    model: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(default=None, ge=1, le=1000)
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=10)
    schedule: str | None = None
    weight_decay: float | None = Field(default=None, ge=0, le=1)
    optimizer: str = Field(default="sgd", description="sgd (momentum) | adam (MSD's MNIST recipe)")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    epsilons: Epsilons = Field(default_factory=dict)
    eps_warmup: float = Field(default=0.0, ge=0.0, le=1.0, description=(
        "share of the optimiser steps over which the training radii grow linearly from 0 to their full "
        "values (0: full radii from the first step); evaluation always uses the full radii"))
    params: dict[str, ParamValue] = Field(default_factory=dict)
    # A checkpoint directory: fine-tuning.
    init_from: str | None = Field(default=None, max_length=MAX_PATH_CHARS)
    pair_models: dict[str, PathText] = Field(default_factory=dict, description=(
        "ramp.pair=auto: checkpoints of single-norm AT models by norm (the missing ones are trained with "
        "this run's budget)"))
    train_n: int | None = Field(default=None, ge=1, description="use only the first N training points")
    monitor_n: int = Field(default=200, ge=0, le=100_000, description="held-out points evaluated per epoch")
    monitor_steps: int = Field(default=20, ge=1, le=1000, description="APGD steps of the per-epoch check")
    eval_n: int = Field(default=1000, ge=0, le=1_000_000, description="points in the final evaluation")
    checks_n: int = Field(default=100, ge=0, le=100_000,
                          description="points of the rigour checks' curves; the 10x-iterations and Square "
                                      "checks take up to 50 robust points (0: no rigour checks)")
    precision: Precision = Field(default="auto",
                                 description="evaluation: auto | fp32 | bf16 (a bfloat16 screen may remove "
                                             "points first; float32 decides every robust verdict)")
    data_root: str | None = Field(default=None, max_length=MAX_PATH_CHARS)
    num_workers: int = Field(default=0, ge=0, le=64, description="DataLoader worker processes")
    train_precision: TrainPrecision = Field(default="fp32", description=(
        "training attacks: auto | fp32 | bf16 | fp16 (the inner maximisation on a reduced-precision copy "
        "of the model; the update itself stays float32; auto: bfloat16 where the hardware multiplies it "
        "natively)"))
    channels_last: bool = Field(default=False, description="train the model in channels-last memory layout")
    compile: bool = Field(default=False, description=(
        "torch.compile the model for training (eager when compilation fails)"))

    @field_validator("model_args")
    @classmethod
    def _model_args(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # The model the spec will run (its dataset's default when not named), known by now: the
        # fields before model_args are validated first.
        dataset = info.data.get("dataset")
        model = info.data.get("model") or (catalog.DATASETS[dataset].default_model
                                           if dataset in catalog.DATASETS else None)
        return check_model_args(model, v) if model else v

    @field_validator(*CATALOG_FIELDS)
    @classmethod
    def _known(cls, v: str | None, info: ValidationInfo) -> str | None:
        # model and schedule may be None (the dataset's default)
        names = CATALOG_FIELDS[str(info.field_name)]
        if v is not None and v not in names:
            raise ValueError(f"unknown {info.field_name} {v!r}; available: {', '.join(names)}")
        return v

    @model_validator(mode="after")
    def _params(self) -> TrainSpec:
        checked = {}
        for key, value in self.params.items():
            checked[key] = coerce_param(key, value)
            if self.method not in catalog.PARAMS[key].methods:
                raise ValueError(f"param {key!r} does not apply to method {self.method!r}")
        self.params = checked
        auto = checked.get("ramp.pair") == "auto"
        if auto and ("ramp.q" in checked or "ramp.r" in checked):
            raise ValueError("ramp.pair=auto chooses ramp.q and ramp.r: give either the pair or 'auto'")
        if self.method == "ramp" and not auto:
            # Compare the effective pair: overriding only q to "l1" clashes with the default r.
            q = checked.get("ramp.q", catalog.PARAMS["ramp.q"].default)
            r = checked.get("ramp.r", catalog.PARAMS["ramp.r"].default)
            if q == r:
                raise ValueError(f"ramp.q and ramp.r must be different norms, both are {q!r}")
        unknown = [norm for norm in self.pair_models if norm not in NORMS]
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"pair_models: unknown norm(s) {names}; expected one of {', '.join(NORMS)}")
        if self.pair_models and not auto:
            raise ValueError("pair_models are the single-norm AT models of ramp.pair=auto; set that param")
        return self

    @property
    def pair_auto(self) -> bool:
        """RAMP's key trade-off pair is chosen before training (``ramp.pair=auto``)."""
        return self.params.get("ramp.pair") == "auto"

    @property
    def finetune(self) -> bool:
        return self.init_from is not None

    def resolve(self) -> ResolvedSpec:
        """Every default filled in (see the module docstring); raises ``ResolveError``."""
        return resolve(self)


class ResolveError(ValueError):
    """A spec that validates but cannot be resolved; ``field`` names the field to set."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class ResolvedSpec(TrainSpec):
    """A ``TrainSpec`` with every default filled in: what is stored, trained and shown."""

    model: str  # type: ignore[assignment]
    epochs: int = Field(ge=1, le=1000)  # type: ignore[assignment]
    batch_size: int = Field(ge=1, le=4096)  # type: ignore[assignment]
    lr: float = Field(gt=0, le=10)  # type: ignore[assignment]
    schedule: str  # type: ignore[assignment]
    weight_decay: float = Field(ge=0, le=1)  # type: ignore[assignment]

    def resolve(self) -> ResolvedSpec:
        return self


def require_resolved(spec: object, who: str) -> ResolvedSpec:
    """``spec`` if it is a ``ResolvedSpec``: entry points downstream of the resolution take only that."""
    if not isinstance(spec, ResolvedSpec):
        raise TypeError(f"{who} takes a ResolvedSpec (TrainSpec.resolve()), not {type(spec).__name__}")
    return spec


def finetune_model(init_from: str) -> tuple[str, dict[str, Any]]:
    """The (model, model_args) of the checkpoint a fine-tuning run starts from, from its metadata."""
    try:
        meta = read_checkpoint_meta(init_from)
    except CheckpointMetaError as e:
        raise ResolveError("model", f"fine-tuning takes the checkpoint's model when none is named, but {e}; "
                                    "name the model") from None
    model, args = meta.get("model"), meta.get("model_args") or {}
    if model not in catalog.MODELS or not isinstance(args, dict):
        raise ResolveError("model", f"the checkpoint {init_from} names model {model!r} with args {args!r}, "
                                    "which this version cannot build; name the model")
    return model, dict(args)


def resolve(spec: TrainSpec) -> ResolvedSpec:
    """The one resolution of a training spec (idempotent: a ``ResolvedSpec`` comes back as it is)."""
    if isinstance(spec, ResolvedSpec):
        return spec
    info = catalog.DATASETS[spec.dataset]
    ft = spec.finetune
    model, model_args = spec.model, dict(spec.model_args)
    if model is None and spec.init_from is not None:
        if model_args:
            raise ResolveError("model_args", "model_args without model: fine-tuning takes the checkpoint's "
                                             "model and its args; name the model to change them")
        model, model_args = finetune_model(spec.init_from)
    params = catalog.param_defaults(spec.method, spec.dataset, ft) | spec.params
    if params.get("ramp.pair") == "auto":  # chosen by the pair selection, not defaulted
        params = {k: v for k, v in params.items() if k not in ("ramp.q", "ramp.r")}
    fields = spec.model_dump() | {
        "model": model or info.default_model,
        "model_args": model_args,
        "epochs": spec.epochs or (info.finetune_epochs if ft else info.epochs),
        "batch_size": spec.batch_size or info.batch_size,
        "lr": spec.lr or (info.finetune_lr if ft else info.lr),
        # Fine-tuning uses the reference's per-third step decay (0.05 -> 0.005 -> 0.0005).
        "schedule": spec.schedule or ("multistep" if ft else info.schedule),
        "weight_decay": (spec.weight_decay if spec.weight_decay is not None
                         else (info.finetune_weight_decay if ft else info.weight_decay)),
        "epsilons": dict(info.epsilons) | spec.epsilons,
        "params": params,
    }
    # Validated again: some rules (ramp.q != ramp.r, model_args' bounds) involve the defaults.
    return ResolvedSpec.model_validate(fields)


class EvalSpec(BaseModel):
    """Evaluate a checkpoint on the dataset's test split (or on the points of ``data_file``)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: PathText
    suite: str | list[str] = catalog.DEFAULT_SUITE
    n: int = Field(default=1000, ge=1, le=1_000_000)
    checks_n: int = Field(default=100, ge=0, le=100_000,
                          description="points of the rigour checks' curves; the 10x-iterations and Square "
                                      "checks take up to 50 robust points (0: no rigour checks)")
    precision: Precision = Field(default="auto",
                                 description="auto | fp32 | bf16 (a bfloat16 screen may remove points first; "
                                             "float32 decides every robust verdict)")
    epsilons: Epsilons = Field(default_factory=dict)
    data_file: PathText | None = None
    batch_size: int = Field(default=256, ge=1, le=4096)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    corruptions: bool = False
    channels_last: bool = Field(default=False, description=(
        "evaluate the float32 model in channels-last memory layout: the same model and decisions, "
        "faster convolution and pooling kernels on CPU (docs/performance.md)"))

    @field_validator("suite")
    @classmethod
    def _suite(cls, v: str | list[str]) -> str | list[str]:
        if v == "fast":
            raise ValueError(
                "the 'fast' suite is now 'monitor' and is an optimistic upper bound, not a result; "
                f"the default, {catalog.DEFAULT_SUITE!r}, is AutoAttack-grade"
            )
        if isinstance(v, str) and v not in catalog.SUITES:
            raise ValueError(
                f"unknown suite {v!r}; use one of {', '.join(catalog.SUITES)} or a list of attack names"
            )
        if isinstance(v, list):
            if not v:
                raise ValueError("a custom suite needs at least one attack")
            unknown = [a for a in v if a not in catalog.EVAL_ATTACKS]
            if unknown:
                raise ValueError(
                    f"unknown attack(s) {', '.join(unknown)}; available: {', '.join(catalog.EVAL_ATTACKS)}"
                )
        return v
