"""Request and response models of the HTTP API.

A job request is a discriminated union on ``kind``. The science fields are validated by the very
same torch-free models the CLI uses (``workers.spec.TrainSpec`` / ``EvalSpec``): each job kind
subclasses one of them and adds the service's fields (``resources``, ``max_retries``). A new kind
(e.g. "sweep") is one more class in ``JOB_KINDS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from workers.spec import EvalSpec, TrainSpec

SERVICE_FIELDS = ("kind", "resources", "max_retries")
MAX_JSON_DEPTH = 32


class Resources(BaseModel):
    """What the job asks Ray for (Ray Train workers, not DataLoader workers)."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(default=1, ge=1, le=64)
    cpus_per_worker: float = Field(default=1.0, gt=0, le=256)
    use_gpu: bool = False


class _ServiceFields(BaseModel):
    resources: Resources = Field(default_factory=Resources)
    max_retries: int = Field(default=0, ge=0, le=10)


class InitFromJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: int = Field(ge=1, le=2**63 - 1)


class InitFromCheckpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(min_length=1, max_length=4096)


class TrainJob(TrainSpec, _ServiceFields):
    kind: Literal["train"]

    @model_validator(mode="after")
    def _no_init(self) -> TrainJob:
        if self.init_from is not None:
            raise ValueError("init_from is only valid for kind 'finetune'")
        return self


class FinetuneJob(TrainSpec, _ServiceFields):
    kind: Literal["finetune"]
    init_from: InitFromJob | InitFromCheckpoint  # type: ignore[assignment]


class EvalJob(EvalSpec, _ServiceFields):
    kind: Literal["eval"]
    checkpoint: str | None = Field(default=None, min_length=1, max_length=4096)  # type: ignore[assignment]
    job_id: int | None = Field(default=None, ge=1, le=2**63 - 1)

    @model_validator(mode="after")
    def _one_source(self) -> EvalJob:
        if (self.checkpoint is None) == (self.job_id is None):
            raise ValueError("give exactly one of 'checkpoint' or 'job_id'")
        return self


JOB_KINDS: tuple[type[BaseModel], ...] = (TrainJob, FinetuneJob, EvalJob)
JobRequest = Annotated[TrainJob | FinetuneJob | EvalJob, Field(discriminator="kind")]
_job_request_adapter: TypeAdapter[TrainJob | FinetuneJob | EvalJob] = TypeAdapter(JobRequest)

# Resolves a job id to the checkpoint it produced, or raises ValueError saying why it cannot.
CheckpointResolver = Callable[[int], str]


class SpecError(ValueError):
    """A job request that cannot be accepted; ``errors`` are (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


_PARAM_MSG = re.compile(r"^param '([^']+)'")


def _field_name(loc: tuple[int | str, ...], tagged: bool, msg: str) -> str:
    # Drop the union tag pydantic puts first ("train", "finetune", ...): users never wrote it.
    parts = [str(p) for p in (loc[1:] if tagged and loc else loc)]
    if not parts:
        # TrainSpec checks params in a model-level validator; point at the key it names.
        m = _PARAM_MSG.match(msg)
        if m:
            parts = ["params", m.group(1)]
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


def parse_job_request(payload: Any) -> TrainJob | FinetuneJob | EvalJob:
    """Validate a decoded JSON body; raises SpecError naming the offending fields."""
    if not isinstance(payload, dict):
        raise SpecError([("body", f"expected a JSON object, got {type(payload).__name__}")])
    kind = payload.get("kind")
    kinds = [k.model_fields["kind"].annotation.__args__[0] for k in JOB_KINDS]  # type: ignore[union-attr]
    if kind not in kinds:
        raise SpecError([("body.kind", f"unknown kind {kind!r}; available: {', '.join(kinds)}")])
    try:
        # Strict: JSON has real types, so "epochs": true or "5" is a client bug worth a 422.
        return _job_request_adapter.validate_python(payload, strict=True)
    except ValidationError as exc:
        raise SpecError(validation_errors(exc)) from None


def _service_part(req: TrainJob | FinetuneJob | EvalJob) -> dict[str, Any]:
    return {"resources": req.resources.model_dump(mode="json"), "max_retries": req.max_retries}


def build_stored_spec(
    req: TrainJob | FinetuneJob | EvalJob, *, resolve_checkpoint: CheckpointResolver
) -> dict[str, Any]:
    """The spec stored with the job: kind + the resolved science spec (every default filled in)
    + resources / max_retries. ``source_job_id`` records where a checkpoint came from."""
    science = req.model_dump(exclude=set(SERVICE_FIELDS))
    source: int | None = None
    if isinstance(req, EvalJob):
        source = science.pop("job_id")
        if source is not None:
            science["checkpoint"] = _resolve(source, "body.job_id", resolve_checkpoint)
        resolved = _validated(EvalSpec, science).model_dump(mode="json")
    else:
        if isinstance(req, FinetuneJob):
            init = req.init_from
            if isinstance(init, InitFromJob):
                source = init.job_id
                science["init_from"] = _resolve(source, "body.init_from.job_id", resolve_checkpoint)
            else:
                science["init_from"] = init.checkpoint
        resolved = _validated(TrainSpec, science).resolve().model_dump(mode="json")
    out = {"kind": req.kind, **resolved, **_service_part(req)}
    if source is not None:
        out["source_job_id"] = source
    return out


def _resolve(job_id: int, field: str, resolver: CheckpointResolver) -> str:
    try:
        return resolver(job_id)
    except ValueError as exc:
        raise SpecError([(field, str(exc))]) from None


def _validated(model: type[TrainSpec] | type[EvalSpec], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(validation_errors(exc, tagged=False)) from None


def work_spec(stored: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored spec that ``TrainSpec(**...)`` / ``EvalSpec(**...)`` accepts."""
    model = EvalSpec if stored.get("kind") == "eval" else TrainSpec
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


# ------------------------------------------------------------------------------- responses


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    status_reason: str | None
    attempt: int
    max_retries: int
    spec: dict[str, Any]
    progress: dict[str, Any] | None
    metrics: dict[str, Any] | None = Field(description="final metrics: clean, linf, l2, l1, union, ...")
    error: str | None
    ray_job_id: str | None
    ray_dashboard_url: str | None
    created_at: datetime
    updated_at: datetime
    timings: dict[str, datetime | None]


class JobListOut(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: int
    attempt: int
    seq: int | None
    type: str
    data: dict[str, Any]
    created_at: datetime


class EventListOut(BaseModel):
    events: list[EventOut]
    next_after: int | None = Field(description="pass as ?after= to get the next page; None when done")


class MetricsOut(BaseModel):
    job_id: int
    history: list[dict[str, Any]] = Field(description="per-epoch metrics events, oldest first")
    final: dict[str, Any] | None


class ArtifactOut(BaseModel):
    name: str
    size: int
    modified_at: datetime


class ArtifactListOut(BaseModel):
    job_id: int
    artifacts: list[ArtifactOut]


# ------------------------------------------------------------------------ internal (drivers)


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int | None = Field(default=None, ge=0, le=2**31 - 1)
    type: Literal["progress", "metrics", "log", "artifact", "status"]
    data: dict[str, Any] = Field(default_factory=dict)
    attempt: int | None = Field(default=None, ge=1, le=1000)


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(max_length=1000)


class DriverStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["running", "succeeded", "failed"]
    metrics: dict[str, Any] | None = None
    error: str | None = Field(default=None, max_length=65_536)


class DriverSpecOut(BaseModel):
    job_id: int
    kind: str
    attempt: int
    status: str
    resume: bool = Field(description="a checkpoint from an earlier attempt exists in job_dir")
    job_dir: str
    spec: dict[str, Any] = Field(description="the stored spec, as GET /v1/jobs/{id} shows it")
    work_spec: dict[str, Any] = Field(description="exactly the fields of TrainSpec / EvalSpec")
    resources: dict[str, Any]
