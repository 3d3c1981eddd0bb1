"""Jobs side by side with paired tests: what ``GET /v1/compare`` returns and the compare page shows.

A job's label is ``#<id> <method or kind>``; each job's result is its stored metrics. The paired
tests (``workers.contract.compare``) run on jobs evaluated on the same points; the notes name
what could not be paired and what mixes precision schemes, suites or radii.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.db.models import Job
from workers.contract.compare import compare_results
from workers.contract.metrics import ACCURACY_KEYS, intervals, precision_label

MAX_COMPARE = 20


def job_label(job: Job) -> str:
    return f"#{job.id} {job.method or job.kind}"


def _metrics(job: Job) -> dict[str, Any] | None:
    return dict(job.result) if isinstance(job.result, dict) else None


def compare_jobs(jobs: Sequence[Job]) -> dict[str, Any]:
    """Each job's accuracies with intervals, then every paired difference and the notes."""
    rows = []
    for job in jobs:
        metrics = _metrics(job) or {}
        rows.append({
            "id": job.id, "label": job_label(job), "status": job.status,
            "accuracy": {k: metrics.get(k) for k in ACCURACY_KEYS},
            "intervals": {k: list(v) for k, v in intervals(metrics).items()},
            "n": metrics.get("n"), "suite": metrics.get("suite"), "precision": precision_label(metrics),
        })
    report = compare_results([(job_label(job), _metrics(job)) for job in jobs]).as_dict()
    return {"jobs": rows, **report}
