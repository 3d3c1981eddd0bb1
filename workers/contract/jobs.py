"""A job as stored: its kind, the science it runs (validated and resolved once, at submission),
the Ray resources it asks for and its retry budget.

The service builds the stored spec (``service.jobs.specs``) and keeps it as JSON; the job driver
reads it back with ``StoredJob.from_stored`` -- the one parse on the workers' side -- and hands the
typed ``work`` down (``ResolvedSpec`` / ``EvalSpec`` / ``SweepSpec``), never re-resolving it.

Stored shape (flat, as ``GET /v1/jobs/{id}`` shows it): ``{"kind": ..., <the work spec's fields,
every default filled in>, "resources": {...}, "max_retries": n, "source_job_id"?, "source_trial"?}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.contract.spec import EvalSpec, ResolvedSpec, Resources, TrainSpec
from workers.contract.sweep import SweepSpec

JobKind = Literal["train", "finetune", "eval", "sweep"]
Work = ResolvedSpec | EvalSpec | SweepSpec
WORK_MODELS: dict[str, type[BaseModel]] = {"train": ResolvedSpec, "finetune": ResolvedSpec, "eval": EvalSpec,
                                           "sweep": SweepSpec}
# The fields resolution fills: a stored training spec without them was not written by the service.
RESOLVED_FIELDS = ("model", "epochs", "batch_size", "lr", "schedule", "weight_decay")
SERVICE_KEYS = ("kind", "resources", "max_retries", "source_job_id", "source_trial")


def work_fields(stored: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored spec that its work model accepts."""
    model = WORK_MODELS.get(str(stored.get("kind")), TrainSpec)
    return {k: v for k, v in stored.items() if k in model.model_fields}


class StoredJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: JobKind
    work: Work
    resources: Resources = Field(default_factory=Resources)
    max_retries: int = 0
    source_job_id: int | None = None
    source_trial: str | None = None

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> StoredJob:
        """The typed job of a stored spec (the resolved fields are taken as they are)."""
        kind = str(stored.get("kind"))
        if kind not in WORK_MODELS:
            raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(WORK_MODELS)}")
        fields = work_fields(stored)
        work: Work
        if WORK_MODELS[kind] is ResolvedSpec and any(fields.get(k) is None for k in RESOLVED_FIELDS):
            # A spec written by other means (an older service, a hand-made row) is resolved here
            # rather than refused; the service's own are read back as they were stored.
            work = TrainSpec.model_validate(fields).resolve()
        else:
            work = WORK_MODELS[kind].model_validate(fields)
        return cls(kind=kind, work=work, resources=Resources.model_validate(stored.get("resources") or {}),
                   max_retries=int(stored.get("max_retries") or 0), source_job_id=stored.get("source_job_id"),
                   source_trial=stored.get("source_trial"))
