"""Job requests: validated, then resolved once into the spec stored with the job.

A job request is a discriminated union on ``kind``. The science fields are validated by the very
same torch-free models the CLI uses (``workers.contract.spec.TrainSpec`` / ``EvalSpec``): each job kind
subclasses one of them and adds the service's fields (``resources``, ``max_retries``). A new kind
is one more class in ``JOB_KINDS``. Sweeps (``SweepJob``) subclass the sweep runner's own
``workers.contract.sweep.SweepSpec`` (torch-free), so what the API accepts is exactly what
the runner expands; their base spec is checked as a train / finetune job first (strictly, with
the fields named ``body.base.<field>``), and every swept value is checked against it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from workers.contract.spec import SERVICE_FIELDS, EvalSpec, ResolvedSpec, ResolveError, Resources, TrainSpec
from workers.contract.sweep import ResolvedTrial, SweepSpec, apply_overrides

MAX_JSON_DEPTH = 32


class _ServiceFields(BaseModel):
    resources: Resources = Field(default_factory=Resources)
    max_retries: int = Field(default=0, ge=0, le=10)


TrialRef = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class InitFromJob(BaseModel):
    """A succeeded train/finetune job's checkpoint, or a sweep's: its best trial's (the sweep must
    have succeeded) or, with ``trial``, that trial's (the trial must have finished)."""

    model_config = ConfigDict(extra="forbid")
    job_id: int = Field(ge=1, le=2**63 - 1)
    trial: TrialRef | None = None


class InitFromCheckpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(min_length=1, max_length=4096)


def _init_from_kind(value: Any) -> str:
    # Choose the branch by the keys given, so errors speak of that branch only.
    if isinstance(value, dict):
        return "InitFromCheckpoint" if "checkpoint" in value and "job_id" not in value else "InitFromJob"
    return type(value).__name__


InitFrom = Annotated[
    Annotated[InitFromJob, Tag("InitFromJob")] | Annotated[InitFromCheckpoint, Tag("InitFromCheckpoint")],
    Discriminator(_init_from_kind),
]
_UNION_TAGS = frozenset({"InitFromJob", "InitFromCheckpoint"})


PairModels = dict[str, InitFrom]  # ramp.pair=auto: a single-norm AT model per norm, by job id or path


class TrainJob(TrainSpec, _ServiceFields):
    kind: Literal["train"]
    pair_models: PairModels = Field(default_factory=dict)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _no_init(self) -> TrainJob:
        if self.init_from is not None:
            raise ValueError("init_from is only valid for kind 'finetune'")
        return self


class FinetuneJob(TrainSpec, _ServiceFields):
    kind: Literal["finetune"]
    init_from: InitFrom  # type: ignore[assignment]
    pair_models: PairModels = Field(default_factory=dict)  # type: ignore[assignment]


class EvalJob(EvalSpec, _ServiceFields):
    kind: Literal["eval"]
    checkpoint: str | None = Field(default=None, min_length=1, max_length=4096)  # type: ignore[assignment]
    job_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    trial: TrialRef | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EvalJob:
        if (self.checkpoint is None) == (self.job_id is None):
            raise ValueError("give exactly one of 'checkpoint' or 'job_id'")
        if self.trial is not None and self.job_id is None:
            raise ValueError("'trial' names a trial of the sweep given as 'job_id'")
        return self


class SweepJob(SweepSpec):
    """kind "sweep": a base train/finetune spec, a parameter space, how to search it."""

    kind: Literal["sweep"]  # type: ignore[assignment]
    max_retries: int = Field(default=0, ge=0, le=10)
    # The base as a train/finetune job (set by parse_sweep_request; its init_from may name a job).
    _base_request: TrainJob | FinetuneJob | None = PrivateAttr(default=None)


SingleJob = TrainJob | FinetuneJob | EvalJob
AnyJob = TrainJob | FinetuneJob | EvalJob | SweepJob
JOB_KINDS: tuple[type[BaseModel], ...] = (TrainJob, FinetuneJob, EvalJob, SweepJob)
JobRequest = Annotated[SingleJob, Field(discriminator="kind")]
_job_request_adapter: TypeAdapter[SingleJob] = TypeAdapter(JobRequest)
BASE_KINDS = ("train", "finetune")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: str
    trial: str | None = None  # the sweep trial it came from


# Resolves (job id, trial or None) to a checkpoint, or raises ValueError saying why it cannot.
CheckpointResolver = Callable[[int, str | None], ResolvedCheckpoint]


class SpecError(ValueError):
    """A job request that cannot be accepted; ``errors`` are (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


_PARAM_MSG = re.compile(r"^param '([^']+)'")


def _field_name(loc: tuple[int | str, ...], tagged: bool, msg: str) -> str:
    # Drop the union tag pydantic puts first ("train", "finetune", ...): users never wrote it.
    parts = [str(p) for p in (loc[1:] if tagged and loc else loc) if p not in _UNION_TAGS]
    if not parts:
        # TrainSpec checks params in a model-level validator; point at the key it names.
        m = _PARAM_MSG.match(msg)
        if m:
            parts = ["params", m.group(1)]
        elif msg.startswith("pair_models"):
            parts = ["pair_models"]
        elif "ramp.q" in msg:
            parts = ["params"]
    return ".".join(["body", *parts])


def _message(err: Any) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def validation_errors(exc: ValidationError, *, tagged: bool = True) -> list[tuple[str, str]]:
    out = []
    for e in exc.errors():
        msg = _message(e)
        out.append((_field_name(tuple(e.get("loc", ())), tagged, msg), msg))
    return out


def _kinds() -> list[str]:
    return [k.model_fields["kind"].annotation.__args__[0] for k in JOB_KINDS]  # type: ignore[union-attr]


def parse_job_request(payload: Any) -> AnyJob:
    """Validate a decoded JSON body; raises SpecError naming the offending fields."""
    if not isinstance(payload, dict):
        raise SpecError([("body", f"expected a JSON object, got {type(payload).__name__}")])
    kind = payload.get("kind")
    kinds = _kinds()
    if kind not in kinds:
        raise SpecError([("body.kind", f"unknown kind {kind!r}; available: {', '.join(kinds)}")])
    if kind == "sweep":
        return parse_sweep_request(payload)
    try:
        # Strict: JSON has real types, so "epochs": true or "5" is a client bug worth a 422.
        return _job_request_adapter.validate_python(payload, strict=True)
    except ValidationError as exc:
        raise SpecError(validation_errors(exc)) from None


# ------------------------------------------------------------------------------------- sweeps

_PLACEHOLDER_INIT = "<checkpoint of job {}>"  # sweep_spec's marker of a not-yet-resolved init_from
_SWEEP_MSG = re.compile(r"^param_space key '([^']+)'")


def _prefixed(errors: list[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    return [(prefix + f.removeprefix("body"), m) for f, m in errors]


def _base_request(payload: dict[str, Any]) -> tuple[dict[str, Any], TrainJob | FinetuneJob]:
    """The sweep's base checked as a train/finetune job (strictly); returns (base with kind, job)."""
    base = payload.get("base")
    if not isinstance(base, dict):
        raise SpecError([("body.base", "expected a train or finetune job spec (a JSON object)")])
    base = {"kind": "train"} | base
    if base["kind"] not in BASE_KINDS:
        reason = f"a sweep's base is a train or finetune spec, got {base['kind']!r}"
        raise SpecError([("body.base.kind", reason)])
    if base.get("max_retries", 0) != 0:
        reason = "retries apply to the whole sweep: set max_retries at the top level"
        raise SpecError([("body.base.max_retries", reason)])
    try:
        req = _job_request_adapter.validate_python(base, strict=True)
    except ValidationError as exc:
        raise SpecError(_prefixed(validation_errors(exc), "body.base")) from None
    assert isinstance(req, TrainJob | FinetuneJob)
    return base, req


def _sweep_field(msg: str) -> str:
    """Where a SweepSpec model-level error points (its validator names the key in the message)."""
    m = _SWEEP_MSG.match(msg)
    if m:
        return f"body.param_space.{m.group(1)}"
    for prefix, field in (("base", "body.base"), ("metric", "body.metric"), ("trial ", "body.param_space"),
                          ("the sweep expands", "body.param_space"), ("invalid sweep", "body")):
        if msg.startswith(prefix):
            return field
    return "body"


def _check_axes(base: dict[str, Any], sweep: SweepJob) -> None:
    """Every value a domain can produce, applied to the base, is a valid job spec -- checked as
    strictly as a submitted job (so ``"epochs": {"grid": ["5"]}`` is refused like ``"epochs": "5"``)."""
    errors: list[tuple[str, str]] = []
    for key, domain in sweep.param_space.items():
        field = f"body.param_space.{key}"
        for value in domain.boundary_values():
            try:
                candidate = apply_overrides(base, {key: value})
            except ValueError as exc:
                errors.append((field, str(exc)))
                break
            try:
                _job_request_adapter.validate_python(candidate, strict=True)
            except ValidationError as exc:
                reasons = "; ".join(f"{f.removeprefix('body.')}: {m}" for f, m in validation_errors(exc))
                errors.append((field, f"value {value!r} gives an invalid spec: {reasons}"))
                break
    if errors:
        raise SpecError(errors)


def parse_sweep_request(payload: dict[str, Any]) -> SweepJob:
    """A sweep request: the base first (as a job), then the sweep's own fields (the runner's model:
    domains, trial expansion, every trial's spec), then every swept value against the base."""
    base, base_req = _base_request(payload)
    checked_base = dict(base)
    if isinstance(base_req, FinetuneJob) and isinstance(base_req.init_from, InitFromJob):
        # Validated with a placeholder; build_stored_spec resolves the real path (it needs the DB).
        checked_base["init_from"] = _PLACEHOLDER_INIT.format(base_req.init_from.job_id)
    body = dict(payload) | {"base": checked_base}
    try:
        # JSON-mode strictness: real JSON types only, but arrays are fine for [low, high] pairs.
        sweep = SweepJob.model_validate_json(json.dumps(body), strict=True)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            msg = _message(e)
            loc = tuple(e.get("loc", ()))
            errors.append((".".join(["body", *map(str, loc)]) if loc else _sweep_field(msg), msg))
        raise SpecError(errors) from None
    _check_axes({k: v for k, v in base.items() if k != "max_retries"}, sweep)
    sweep._base_request = base_req
    return sweep


def _base_stored(base_req: TrainJob | FinetuneJob, init_from: str | None) -> dict[str, Any]:
    """The base as stored: the fields the user set (trials resolve their defaults each, since a
    swept method or dataset changes them), the init_from path, the trial resources in full."""
    given = base_req.model_dump(mode="json", exclude_unset=True, exclude=set(SERVICE_FIELDS))
    given.pop("init_from", None)
    out: dict[str, Any] = {"kind": base_req.kind, **given}
    if init_from is not None:
        out["init_from"] = init_from
    out["resources"] = base_req.resources.model_dump(mode="json")
    return out


def build_sweep_spec(
    req: SweepJob, *, resolve_checkpoint: CheckpointResolver
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the stored sweep spec, its trials: trial_id / index / config / resolved spec)."""
    base_req = req._base_request
    if base_req is None:
        raise ValueError("build_sweep_spec needs a SweepJob from parse_sweep_request")
    source: ResolvedCheckpoint | None = None
    source_job: int | None = None
    init_from: str | None = None
    if isinstance(base_req, FinetuneJob):
        init = base_req.init_from
        if isinstance(init, InitFromJob):
            source_job = init.job_id
            fields = ("body.base.init_from.job_id", "body.base.init_from.trial")
            source = _resolve(init.job_id, init.trial, fields, resolve_checkpoint)
            init_from = source.path
        else:
            init_from = init.checkpoint
    base = _base_stored(base_req, init_from)
    sweep_fields = req.model_dump(mode="json", exclude={"kind", "base", "max_retries", "param_space"})
    stored: dict[str, Any] = {
        "kind": "sweep",
        "base": base,
        "param_space": {k: d.model_dump(mode="json", exclude_none=True) for k, d in req.param_space.items()},
        **sweep_fields,
        "seed": req.sampling_seed(),
        "max_retries": req.max_retries,
    }
    # The runner's model and its one expansion, on exactly what is stored: the trials shown are
    # the trials run.
    trials = [
        {"trial_id": t.trial_id, "index": t.index, "config": t.overrides,
         "spec": t.spec.model_dump(mode="json")}
        for t in _expanded(_validated_sweep(stored))
    ]
    stored["num_trials"] = len(trials)
    if source_job is not None:
        stored["source_job_id"] = source_job
        if source is not None and source.trial is not None:
            stored["source_trial"] = source.trial
    return stored, trials


def _validated_sweep(stored: dict[str, Any]) -> SweepSpec:
    try:
        return SweepSpec.model_validate(work_spec(stored))
    except ValidationError as exc:
        raise SpecError([(_sweep_field(m), m) for _, m in validation_errors(exc, tagged=False)]) from None


def _expanded(sweep: SweepSpec) -> list[ResolvedTrial]:
    try:
        return sweep.expand()
    except ResolveError as exc:
        raise SpecError([(f"body.base.{exc.field}", str(exc))]) from None
    except ValueError as exc:
        raise SpecError([(_sweep_field(str(exc)), str(exc))]) from None


def _service_part(req: SingleJob) -> dict[str, Any]:
    return {"resources": req.resources.model_dump(mode="json"), "max_retries": req.max_retries}


def build_stored_spec(req: SingleJob, *, resolve_checkpoint: CheckpointResolver) -> dict[str, Any]:
    """The spec stored with the job: kind + the resolved science spec (every default filled in)
    + resources / max_retries. ``source_job_id`` (and ``source_trial``) record where a
    checkpoint came from."""
    science = req.model_dump(exclude=set(SERVICE_FIELDS))
    source: ResolvedCheckpoint | None = None
    source_job: int | None = None
    if isinstance(req, EvalJob):
        source_job = science.pop("job_id")
        trial = science.pop("trial")
        if source_job is not None:
            source = _resolve(source_job, trial, ("body.job_id", "body.trial"), resolve_checkpoint)
            science["checkpoint"] = source.path
        resolved = _validated(EvalSpec, science).model_dump(mode="json")
    else:
        if isinstance(req, FinetuneJob):
            init = req.init_from
            if isinstance(init, InitFromJob):
                source_job = init.job_id
                fields = ("body.init_from.job_id", "body.init_from.trial")
                source = _resolve(source_job, init.trial, fields, resolve_checkpoint)
                science["init_from"] = source.path
            else:
                science["init_from"] = init.checkpoint
        science["pair_models"] = {
            norm: _checkpoint_path(ref, f"body.pair_models.{norm}", resolve_checkpoint)
            for norm, ref in req.pair_models.items()
        }
        resolved = _resolved(_validated(TrainSpec, science)).model_dump(mode="json")
    out = {"kind": req.kind, **resolved, **_service_part(req)}
    if source_job is not None:
        out["source_job_id"] = source_job
        if source is not None and source.trial is not None:
            out["source_trial"] = source.trial
    return out


def _checkpoint_path(ref: InitFromJob | InitFromCheckpoint, field: str, resolver: CheckpointResolver) -> str:
    if isinstance(ref, InitFromCheckpoint):
        return ref.checkpoint
    return _resolve(ref.job_id, ref.trial, (f"{field}.job_id", f"{field}.trial"), resolver).path


def _resolve(
    job_id: int, trial: str | None, fields: tuple[str, str], resolver: CheckpointResolver
) -> ResolvedCheckpoint:
    """``fields``: (where the job id was given, where the trial was given)."""
    try:
        return resolver(job_id, trial)
    except ValueError as exc:
        raise SpecError([(fields[0] if trial is None else fields[1], str(exc))]) from None


def _resolved(spec: TrainSpec) -> ResolvedSpec:
    try:
        return spec.resolve()
    except ResolveError as exc:
        raise SpecError([(f"body.{exc.field}", str(exc))]) from None
    except ValidationError as exc:  # a rule that involves the defaults
        raise SpecError(validation_errors(exc, tagged=False)) from None


def _validated(model: type[TrainSpec] | type[EvalSpec], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(validation_errors(exc, tagged=False)) from None


_WORK_MODELS: dict[str, type[BaseModel]] = {"eval": EvalSpec, "sweep": SweepSpec}


def work_spec(stored: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored spec that ``TrainSpec(**...)`` / ``EvalSpec(**...)`` /
    ``SweepSpec(**...)`` accepts."""
    model = _WORK_MODELS.get(str(stored.get("kind")), TrainSpec)
    return {k: v for k, v in stored.items() if k in model.model_fields}


def check_json_value(value: Any, *, depth: int = 0, path: str = "body") -> None:
    """Reject what JSON allows but the databases cannot store: lone surrogates and NUL in strings,
    and absurd nesting (keeps serialisation far from the recursion limit)."""
    if depth > MAX_JSON_DEPTH:
        raise SpecError([(path, f"nested deeper than {MAX_JSON_DEPTH} levels")])
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, path)
            check_json_value(v, depth=depth + 1, path=f"{path}.{k}" if len(path) < 200 else path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json_value(v, depth=depth + 1, path=f"{path}.{i}" if len(path) < 200 else path)


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise SpecError([(path, "strings must not contain NUL characters")])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError([(path, "strings must be valid unicode (no lone surrogates)")]) from None


def sanitize_json(value: Any, *, depth: int = 0) -> Any:
    """Drivers' reports are never rejected for their text: NUL and lone surrogates are replaced,
    too-deep nesting is cut (a log line must not make the reporter retry forever)."""
    if depth > MAX_JSON_DEPTH:
        return None
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {sanitize_json(str(k)): sanitize_json(v, depth=depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitize_json(v, depth=depth + 1) for v in value]
    return value
