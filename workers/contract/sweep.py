"""The sweep spec: a base training spec, a parameter space over it, and how to search it. Torch-free.

The service validates sweep requests with this module (no torch, no Ray at import time), and the
sweep runner expands the very same trials from it, so what the API shows before a sweep starts is
exactly what runs.

Shape (field names fixed)::

    {"kind": "sweep",
     "base": {<a train or finetune job spec: method, dataset, model, epochs, epsilons, params, lr,
              resources, ...>},
     "param_space": {"params.ramp.lambda": {"grid": [0.5, 1.5, 5]},
                     "epsilons.l1": {"grid": [8, 12, 16]},
                     "lr": {"uniform": [0.01, 0.1]}},
     "num_samples": 1, "metric": "union", "mode": "max", "max_concurrent_trials": 2,
     "scheduler": null | {"type": "asha", "grace_period": 1, "reduction_factor": 2}}

Keys: ``params.X`` addresses ``params["X"]`` of the base spec (``X`` itself contains dots, e.g.
``ramp.lambda``); any other key is a dotted path into the spec: a scalar field (``lr``, ``seed``,
``epochs``) or one entry of a dict field (``epsilons.l1``, ``model_args.width``).

Domains: ``grid`` (every value, crossed with the other grids), ``choice`` (one value drawn per
trial), ``uniform`` / ``loguniform`` ([low, high] floats), ``randint`` ([low, high) integers, the
upper bound excluded as in Ray Tune). The trial list is ``num_samples`` repetitions of the grid's
cartesian product (first key varying slowest); the random domains are drawn per trial from a
generator seeded by ``seed`` (default: the base spec's seed), so a sweep is reproducible from its
spec.

Validating a ``SweepSpec`` checks its shape: the base, every key, every domain's boundary values
applied to the base. Expanding it into runnable trials is explicit and done once per process:
``SweepSpec.expand()`` gives each trial's ``ResolvedSpec`` (the one resolution of
``workers.contract.spec``), which the service stores as the trial rows and the runner trains.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workers.contract.metrics import ACCURACY_KEYS
from workers.contract.norms import NORMS
from workers.contract.spec import (  # noqa: F401  (Resources re-exported)
    SERVICE_FIELDS,
    ResolvedSpec,
    ResolveError,
    Resources,
    TrainSpec,
)

MAX_TRIALS = 1000
MONITOR_METRICS = ACCURACY_KEYS  # what the held-out monitor set reports per epoch
# Result keys a sweep can rank trials by, besides the held-out monitor metrics (see
# ``workers.ray_entry.runtime.epoch_metrics``): training loss parts and training robust accuracy.
_OTHER_METRIC = re.compile(rf"^(loss_[a-z][a-z0-9_]*|train_acc_({'|'.join(NORMS)}))$")
_DICT_FIELDS = frozenset({"epsilons", "model_args"})
# A placeholder for validation only: an ``init_from`` given as a job id is resolved by the service.
_UNRESOLVED_INIT = "<checkpoint of job {}>"


class Domain(BaseModel):
    """One axis of the parameter space: exactly one of the five kinds."""

    model_config = ConfigDict(extra="forbid")

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of grid, choice, uniform, loguniform, randint (got {given or 'none'})"
            )
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("grid", "choice") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint"):
            low, high = value
            if kind == "randint" and not all(-(2**63) < v < 2**63 for v in value):
                raise ValueError("randint bounds must be 64-bit integers (|n| < 2**63)")
            if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
                raise ValueError(f"{kind} needs finite low < high, got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {low}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    def boundary_values(self) -> list[Any]:
        """The values that bound what this domain can produce (all of them for grid/choice)."""
        kind = self.kind
        if kind in ("grid", "choice"):
            return list(getattr(self, kind))
        low, high = getattr(self, kind)
        return [low, high - 1] if kind == "randint" else [low, high]

    def sample(self, rng: random.Random) -> Any:
        kind = self.kind
        if kind == "choice":
            return rng.choice(self.choice)
        if kind == "uniform":
            return rng.uniform(*self.uniform)
        if kind == "loguniform":
            low, high = self.loguniform
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        if kind == "randint":
            return rng.randrange(*self.randint)
        raise ValueError(f"a {kind} domain is expanded, not sampled")


class Asha(BaseModel):
    """Asynchronous successive halving; its time unit is the epoch."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha"] = "asha"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)
    max_t: int | None = Field(default=None, ge=1, description="default: the largest epochs of any trial")


@dataclass(frozen=True)
class TrialConfig:
    """One expanded trial: its swept values and the full (unresolved) training spec they give."""

    index: int
    overrides: dict[str, Any]
    spec: dict[str, Any]

    @property
    def trial_id(self) -> str:
        return trial_id(self.index)


@dataclass(frozen=True)
class ResolvedTrial:
    """One runnable trial: its swept values and its resolved spec (what is stored and trained)."""

    index: int
    overrides: dict[str, Any]
    spec: ResolvedSpec

    @property
    def trial_id(self) -> str:
        return trial_id(self.index)


def trial_id(index: int) -> str:
    """Deterministic trial ids, so the service can name child trials before the sweep runs."""
    return f"trial_{index:04d}"


def split_key(key: str) -> tuple[str, ...]:
    """``"params.ramp.lambda"`` -> ("params", "ramp.lambda"); ``"epsilons.l1"`` -> ("epsilons", "l1")."""
    if key.startswith("params."):
        name = key[len("params."):]
        if not name:
            raise ValueError(f"param_space key {key!r}: 'params.' must be followed by a param name")
        return ("params", name)
    parts = tuple(key.split("."))
    head = parts[0]
    fields = TrainSpec.model_fields
    if head not in fields:
        raise ValueError(
            f"param_space key {key!r}: unknown field {head!r}; sweepable: "
            f"{', '.join(sorted(f for f in fields if f != 'params'))} or params.<name>"
        )
    if head == "params":
        raise ValueError(f"param_space key {key!r}: address one param, e.g. 'params.ramp.lambda'")
    if head in _DICT_FIELDS:
        if len(parts) != 2 or not parts[1]:
            raise ValueError(f"param_space key {key!r}: address one entry, e.g. '{head}.<name>'")
        return parts
    if len(parts) != 1:
        raise ValueError(f"param_space key {key!r}: field {head!r} has no sub-fields")
    return parts


def apply_overrides(spec: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` with each dotted key of ``overrides`` set."""
    out = copy.deepcopy(dict(spec))
    for key, value in overrides.items():
        path = split_key(key)
        if len(path) == 1:
            out[path[0]] = value
        else:
            container = dict(out.get(path[0]) or {})
            container[path[1]] = value
            out[path[0]] = container
    return out


def split_base(base: Mapping[str, Any]) -> tuple[dict[str, Any], Resources]:
    """A job spec -> (the TrainSpec fields, the Ray resources); the service-only fields dropped.

    ``init_from`` may be a path, ``{"checkpoint": PATH}`` or ``{"job_id": ID}``; the last is kept
    as a placeholder that validates but cannot run (the service resolves it to a path first).
    """
    kind = base.get("kind", "train")
    if kind not in ("train", "finetune"):
        raise ValueError(f"base.kind must be 'train' or 'finetune', got {kind!r}")
    train = {k: v for k, v in base.items() if k not in SERVICE_FIELDS}
    init = train.get("init_from")
    if isinstance(init, Mapping):
        if set(init) == {"checkpoint"}:
            train["init_from"] = init["checkpoint"]
        elif set(init) == {"job_id"}:
            train["init_from"] = _UNRESOLVED_INIT.format(init["job_id"])
        else:
            raise ValueError("base.init_from must be a path, {'checkpoint': PATH} or {'job_id': ID}")
    if kind == "finetune" and train.get("init_from") is None:
        raise ValueError("base.kind 'finetune' needs base.init_from")
    if kind == "train" and train.get("init_from") is not None:
        raise ValueError("base.init_from is only valid for base.kind 'finetune'")
    resources = Resources.model_validate(base.get("resources") or {})
    return train, resources


def is_unresolved_init(spec: Mapping[str, Any]) -> bool:
    init = spec.get("init_from")
    return isinstance(init, str) and init.startswith("<checkpoint of job ")


def _validation_reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()))
        msg = e.get("msg", "").replace("Value error, ", "")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _check_train_spec(spec: Mapping[str, Any], context: str) -> TrainSpec:
    try:
        return TrainSpec.model_validate(spec)
    except ValidationError as e:
        raise ValueError(f"{context}: {_validation_reason(e)}") from None


class SweepSpec(BaseModel):
    """A validated sweep request (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sweep"] = "sweep"
    base: dict[str, Any]
    param_space: dict[str, Domain] = Field(min_length=1)
    num_samples: int = Field(default=1, ge=1, le=MAX_TRIALS)
    metric: str = "union"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int | None = Field(default=2, ge=1, le=MAX_TRIALS)
    scheduler: Asha | None = None
    reuse_actors: bool = True
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="sampling seed; default base.seed")

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in MONITOR_METRICS and not _OTHER_METRIC.match(v):
            raise ValueError(
                f"unknown metric {v!r}; use one of {', '.join(MONITOR_METRICS)}, loss_<part> "
                f"(e.g. loss_ce) or train_acc_<norm>"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        train, _ = split_base(self.base)
        _check_train_spec(train, "base")
        for key, domain in self.param_space.items():
            split_key(key)
            for value in domain.boundary_values():
                _check_train_spec(
                    apply_overrides(train, {key: value}), f"param_space key {key!r}: value {value!r}"
                )
        n = self.num_trials
        if n > MAX_TRIALS:
            raise ValueError(f"the sweep expands to {n} trials; at most {MAX_TRIALS} are allowed")
        return self

    @property
    def num_trials(self) -> int:
        grid = [len(d.grid) for d in self.param_space.values() if d.kind == "grid"]
        return self.num_samples * math.prod(grid)

    def train_base(self) -> dict[str, Any]:
        return split_base(self.base)[0]

    def resources(self) -> Resources:
        return split_base(self.base)[1]

    def sampling_seed(self) -> int:
        return self.seed if self.seed is not None else int(self.base.get("seed", 0))

    def trials(self) -> list[TrialConfig]:
        """Every trial, in order (deterministic)."""
        train = self.train_base()
        grid_keys = [k for k, d in self.param_space.items() if d.kind == "grid"]
        random_keys = [k for k, d in self.param_space.items() if d.kind != "grid"]
        rng = random.Random(self.sampling_seed())
        points = list(itertools.product(*(self.param_space[k].grid for k in grid_keys)))
        out: list[TrialConfig] = []
        for _ in range(self.num_samples):
            for point in points:
                overrides = dict(zip(grid_keys, point, strict=True))
                for key in random_keys:
                    overrides[key] = self.param_space[key].sample(rng)
                # Keep the param_space's key order, whatever the domain kinds.
                overrides = {k: overrides[k] for k in self.param_space}
                out.append(TrialConfig(len(out), overrides, apply_overrides(train, overrides)))
        return out

    def expand(self) -> list[ResolvedTrial]:
        """Every trial validated and resolved: the one expansion (a ``ValueError`` names the trial;
        a ``ResolveError`` keeps the field to set)."""
        if is_unresolved_init(self.train_base()):
            raise ValueError("base.init_from names a job; resolve it to a checkpoint path first")
        out = []
        for trial in self.trials():
            context = f"trial {trial.index} {trial.overrides}"
            try:
                spec = _check_train_spec(trial.spec, context).resolve()
            except ResolveError as e:
                raise ResolveError(e.field, f"{context}: {e}") from None
            except ValidationError as e:  # a rule that involves the defaults (ramp.q != ramp.r)
                raise ValueError(f"{context}: {_validation_reason(e)}") from None
            if self.metric in MONITOR_METRICS and spec.monitor_n == 0:
                raise ValueError(
                    f"metric {self.metric!r} is measured on the held-out monitor set, but trial "
                    f"{trial.index} has monitor_n = 0"
                )
            out.append(ResolvedTrial(trial.index, trial.overrides, spec))
        return out


def parse_sweep_spec(data: Mapping[str, Any]) -> SweepSpec:
    """Validate a sweep request; any problem raises ``ValueError`` naming the key and the reason."""
    try:
        return SweepSpec.model_validate(dict(data))
    except ValidationError as e:
        raise ValueError(f"invalid sweep spec: {_validation_reason(e)}") from None


# --- choosing the best trial -------------------------------------------------------------------


def trial_score(history: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """A trial's score: ``metric`` in its last reported epoch that has it (Tune's "last" scope).

    The last epoch, not the best one, because the checkpoint a trial leaves is its last one.
    """
    for row in reversed(history):
        value = row.get(metric)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def best_trial(
    trials: Iterable[Mapping[str, Any]], metric: str, mode: Literal["max", "min"]
) -> str | None:
    """The ``trial_id`` with the best score; ties go to the earliest trial; None if none scored.

    Each trial is a mapping with ``trial_id`` and ``metrics`` (its per-epoch results, in order).
    Trials that failed before reporting have no score and are never chosen.
    """
    best_id, best_score = None, None
    for t in trials:
        score = trial_score(t.get("metrics") or [], metric)
        if score is None:
            continue
        better = best_score is None or (score > best_score if mode == "max" else score < best_score)
        if better:
            best_id, best_score = t["trial_id"], score
    return best_id


# --- sizing trials so that a sweep cannot deadlock -----------------------------------------------

TRIAL_CPU = 0.01  # the Tune trial actor only waits on its TorchTrainer; its real work is in the workers
MAX_TRIM = 0.05  # how much of a worker's requested CPU share the sizing may shave off
_GRANULE = 1e-4  # Ray's resource granularity


@dataclass(frozen=True)
class ResourcePlan:
    trial_cpu: float
    num_workers: int
    cpus_per_worker: float
    use_gpu: bool
    max_concurrent_trials: int

    @property
    def cpus_per_trial(self) -> float:
        return self.trial_cpu + self.num_workers * self.cpus_per_worker


def _floor_granule(x: float) -> float:
    return math.floor(x / _GRANULE + 1e-9) * _GRANULE


def plan_resources(
    resources: Resources, *, total_cpus: float, total_gpus: float, max_concurrent_trials: int | None
) -> ResourcePlan:
    """Trial resources such that every admitted trial can always start its workers.

    Tune admits a trial when its own actor fits, but the trial's TorchTrainer asks for its workers
    afterwards; admitting more trials than their workers fit deadlocks (measured on 2 CPUs). So the
    trial actor takes a token ``TRIAL_CPU``, the concurrency ``c`` is what the requested worker CPUs
    allow when each may be trimmed by up to ``MAX_TRIM`` (at least 1, at most
    ``max_concurrent_trials``, GPUs permitting), and the workers' CPU share is set so that
    ``c * (TRIAL_CPU + num_workers * cpus_per_worker) <= total_cpus``. A trimmed share only changes
    Ray's accounting: a worker with 0.99 CPU runs like one with 1.
    """
    k, wanted = resources.num_workers, resources.cpus_per_worker
    if total_cpus <= TRIAL_CPU:
        raise ValueError(f"the Ray cluster has {total_cpus} CPUs; a sweep needs more than {TRIAL_CPU}")
    # Trimming a worker's share by up to MAX_TRIM is worth running one more trial at once.
    limits = [max(1, int((total_cpus + 1e-9) // (TRIAL_CPU + (1 - MAX_TRIM) * k * wanted)))]
    if resources.use_gpu:
        if total_gpus < k:
            raise ValueError(
                f"a trial needs {k} GPU(s) (use_gpu with {k} workers); the cluster has {total_gpus}"
            )
        limits.append(int(total_gpus // k))
    if max_concurrent_trials is not None:
        limits.append(max_concurrent_trials)
    concurrency = min(limits)
    per_worker = min(wanted, _floor_granule((total_cpus / concurrency - TRIAL_CPU) / k))
    if per_worker < _GRANULE:
        raise ValueError(f"{k} workers per trial do not fit in {total_cpus} CPUs")
    return ResourcePlan(TRIAL_CPU, k, per_worker, resources.use_gpu, concurrency)
