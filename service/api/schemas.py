"""Response models of the HTTP API and the drivers' request models (the job requests themselves are
validated in ``service.jobs.specs``). Responses are built from the ORM rows (``from_attributes``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, field_validator

from workers.contract.events import Event, EventType
from workers.contract.metrics import intervals
from workers.contract.results import result_notes, result_warnings

NOT_BEFORE_DOC = ("a queued automatic retry is not dispatched before this time (RAMP_RETRY_DELAY_S after "
                  "the failure); null otherwise")


class JobOut(BaseModel):
    """A job, read from its row (``JobOut.of(job, dashboard_url)``)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    status_reason: str | None
    attempt: int
    max_retries: int
    spec: dict[str, Any]
    progress: dict[str, Any] | None
    metrics: dict[str, Any] | None = Field(validation_alias=AliasChoices("metrics", "result"),
                                           description="final metrics: clean, linf, l2, l1, union, ...")
    error: str | None
    ray_job_id: str | None
    ray_dashboard_url: str | None = None
    created_at: datetime
    updated_at: datetime
    timings: dict[str, datetime | None]
    not_before: datetime | None = Field(default=None, description=NOT_BEFORE_DOC)

    @computed_field(description="what a reader of the metrics must know: an upper-bound suite, failed "
                                "evaluation checks, a legacy reduced-precision scheme")  # type: ignore[prop-decorator]
    @property
    def warnings(self) -> list[str]:
        return result_warnings(self.metrics)

    @computed_field(description="what the evaluation checks could not decide (fewer than 50 relevant "
                                "points): never a pass")  # type: ignore[prop-decorator]
    @property
    def notes(self) -> list[str]:
        return result_notes(self.metrics) if self.metrics else []

    @computed_field(description="95 % interval [lo, hi] of each accuracy (Wilson), as fractions; "
                                "derived from the accuracy and n for results that predate them")  # type: ignore[prop-decorator]
    @property
    def intervals(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in intervals(self.metrics).items()}

    @classmethod
    def of(cls, job: Any, dashboard_url: str | None) -> JobOut:
        out = cls.model_validate(job)
        out.ray_dashboard_url = _dashboard_link(job, dashboard_url)
        return out


def _spec_value(spec: Any, key: str) -> str | None:
    """``spec[key]``, or a sweep's ``spec.base[key]`` (a sweep trains its base's method/data)."""
    if not isinstance(spec, dict):
        return None
    value = spec.get(key)
    if value is None and isinstance(spec.get("base"), dict):
        value = spec["base"].get(key)
    return value if isinstance(value, str) else None


class JobSummaryOut(BaseModel):
    """A job in a listing: what a table row shows, without the spec and the full result (about
    2.5 KB a job, and a jobs page polls its listing). ``GET /v1/jobs/{id}`` has the whole job."""

    id: int
    kind: str
    status: str
    status_reason: str | None
    attempt: int
    max_retries: int
    method: str | None
    dataset: str | None
    model: str | None
    progress: dict[str, Any] | None
    metrics: dict[str, Any] | None = Field(
        description="the result's top-level numbers and labels (clean, linf, l2, l1, union, suite, ...); "
                    "curves, checks and per-attack detail are on the job itself")
    warnings: list[str] = Field(description="as the job's own warnings (computed from the full result)")
    error: str | None
    ray_job_id: str | None
    ray_dashboard_url: str | None = None
    created_at: datetime
    updated_at: datetime
    timings: dict[str, datetime | None]
    not_before: datetime | None = Field(default=None, description=NOT_BEFORE_DOC)

    @classmethod
    def of(cls, job: Any, dashboard_url: str | None) -> JobSummaryOut:
        result = job.result if isinstance(job.result, dict) else None
        headline = None if result is None else {
            k: v for k, v in result.items() if isinstance(v, int | float | str | bool) or v is None}
        return cls(
            id=job.id, kind=job.kind, status=job.status, status_reason=job.status_reason,
            attempt=job.attempt, max_retries=job.max_retries, method=job.method,
            dataset=_spec_value(job.spec, "dataset"), model=_spec_value(job.spec, "model"),
            progress=job.progress, metrics=headline, warnings=result_warnings(result), error=job.error,
            ray_job_id=job.ray_job_id, ray_dashboard_url=_dashboard_link(job, dashboard_url),
            created_at=job.created_at, updated_at=job.updated_at, timings=job.timings,
            not_before=job.not_before,
        )


def _dashboard_link(job: Any, dashboard_url: str | None) -> str | None:
    if job.ray_job_id and dashboard_url:
        return f"{dashboard_url.rstrip('/')}/#/jobs/{job.ray_job_id}"
    return None


class JobListOut(BaseModel):
    jobs: list[JobSummaryOut]
    next_cursor: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    attempt: int
    seq: int | None
    type: EventType
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


class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    trial_id: str
    index: int = Field(validation_alias=AliasChoices("index", "trial_index"))
    attempt: int = Field(description="the sweep attempt that ran it")
    status: str = Field(description="pending, running, succeeded, stopped (by ASHA), failed, cancelled")
    config: dict[str, Any] = Field(default_factory=dict, description="the swept values, by param_space key")
    score: float | None = Field(default=None,
                                description="the sweep's metric in the trial's last recorded epoch")
    metrics: list[dict[str, Any]] | None = Field(default=None, description="per-epoch metrics, oldest first")
    final: dict[str, Any] | None = Field(description="final evaluation: clean, linf, l2, l1, union, ...")
    checkpoint: str | None = Field(description="artifact name of its checkpoint, under the sweep's job")
    error: str | None
    spec: dict[str, Any] | None = Field(description="the trial's training spec, defaults filled in")
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime

    @field_validator("config", mode="before")
    @classmethod
    def _no_config(cls, value: Any) -> Any:
        return value or {}

    @classmethod
    def of(cls, trial: Any, score: float | None, *, history: bool = True) -> TrialOut:
        out = cls.model_validate(trial)
        out.score = score
        out.metrics = list(trial.metrics or []) if history else None
        return out


class TrialListOut(BaseModel):
    job_id: int
    status: str = Field(description="the sweep job's status")
    metric: str
    mode: str
    param_keys: list[str] = Field(description="the param_space keys, in order")
    best_trial_id: str | None = Field(description="best by the recorded metrics (same rule as the sweep)")
    best_score: float | None
    trials: list[TrialOut]


# ------------------------------------------------------------------------ internal (drivers)


EventIn = Event


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
    work_spec: dict[str, Any] = Field(description="exactly the fields of TrainSpec / EvalSpec / SweepSpec")
    resources: dict[str, Any]
    path_roots: list[str] = Field(default_factory=list, description=(
        "where the spec's paths may lie (the data roots and the service's storage, canonical): the "
        "driver re-checks every path against them before opening it"))


class ComparedJob(BaseModel):
    id: int
    label: str
    status: str
    accuracy: dict[str, float | None] = Field(description="clean, linf, l2, l1, union as fractions")
    intervals: dict[str, list[float]] = Field(description="95 % Wilson interval [lo, hi] of each accuracy")
    n: int | None
    suite: str | list[str] | None
    precision: str = Field(description="the precision scheme: fp32, bf16-screen+fp32 (float32 decisions), "
                                       "or bf16 (legacy)")


class PairOut(BaseModel):
    a: str
    b: str
    metric: str
    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float = Field(description="accuracy_a - accuracy_b")
    only_a: int = Field(description="points a got right and b got wrong")
    only_b: int
    p: float = Field(description="exact McNemar p value (two-sided)")
    p_holm: float = Field(description="Holm-adjusted over every pair and metric of this report")
    significant: bool = Field(description="p < 0.05")
    decidable: bool = Field(description="the discordant points (only_a + only_b, at least 6) could have "
                                        "given p < 0.05 at all; false: inconclusive, not 'no difference'")


class CompareOut(BaseModel):
    jobs: list[ComparedJob]
    pairs: list[PairOut] = Field(description="paired differences of jobs evaluated on the same points")
    notes: list[str] = Field(description="what could not be paired; mixed precision schemes, suites or radii")
    comparisons: int
    alpha: float
