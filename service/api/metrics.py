"""Prometheus metrics, through ``prometheus_client`` on a registry of the service's own.

Three families: ``ramp_jobs`` (gauge per status, read from the DB at scrape time),
``ramp_dispatch_latency_seconds`` (histogram: queued -> running, observed on each transition) and
``ramp_http_request_duration_seconds`` (histogram per method / route template / status code).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest

from service.db.models import Job
from service.state import JobStatus

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUEST_LATENCY = Histogram(
    "ramp_http_request_duration_seconds",
    "HTTP request latency by method, route template and status code.",
    ("method", "route", "status"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
DISPATCH_LATENCY = Histogram(
    "ramp_dispatch_latency_seconds",
    "Time from a job entering the queue to running on Ray.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
    registry=REGISTRY,
)
JOBS = Gauge("ramp_jobs", "Jobs by status.", ("status",), registry=REGISTRY)


def observe_request(seconds: float, method: str, route: str, status: int) -> None:
    REQUEST_LATENCY.labels(method, route, str(status)).observe(seconds)


def observe_transition(job: Job, old: str, new: str) -> None:
    """``service.jobs.transitions.transition_listeners`` hook."""
    if new == JobStatus.RUNNING.value and job.queued_at is not None and job.running_at is not None:
        DISPATCH_LATENCY.observe(max(0.0, (job.running_at - job.queued_at).total_seconds()))


def render(counts: dict[str, int]) -> bytes:
    """The exposition text, with the job gauge set from ``counts`` (read from the DB just now)."""
    for status in JobStatus:
        JOBS.labels(status.value).set(counts.get(status.value, 0))
    return generate_latest(REGISTRY)
