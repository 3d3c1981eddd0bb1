"""Prometheus metrics in the text exposition format (version 0.0.4), without prometheus_client.

Three families: ``ramp_jobs`` (gauge per status, read from the DB at scrape time),
``ramp_dispatch_latency_seconds`` (histogram: queued -> running, observed on each transition) and
``ramp_http_request_duration_seconds`` (histogram per method / route template / status code).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

from service.db.models import Job
from service.state import JobStatus

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


class Histogram:
    def __init__(self, name: str, help_text: str, labelnames: Sequence[str], buckets: Sequence[float]):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._lock = threading.Lock()
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts, total = self._series.setdefault(tuple(labels), ([0] * len(self.buckets), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            total[0] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            series = {k: (list(c), t[0]) for k, (c, t) in self._series.items()}
        for labels, (counts, total) in sorted(series.items()):
            for bound, count in zip(self.buckets, counts, strict=True):
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, ('le', _fmt(bound)))} {count}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {_fmt(total)}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {counts[-1]}"


REQUEST_LATENCY = Histogram(
    "ramp_http_request_duration_seconds",
    "HTTP request latency by method, route template and status code.",
    ("method", "route", "status"),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DISPATCH_LATENCY = Histogram(
    "ramp_dispatch_latency_seconds",
    "Time from a job entering the queue to running on Ray.",
    (),
    (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
)


def observe_transition(job: Job, old: str, new: str) -> None:
    """repository.transition_listeners hook."""
    if new == JobStatus.RUNNING.value and job.queued_at is not None and job.running_at is not None:
        DISPATCH_LATENCY.observe(max(0.0, (job.running_at - job.queued_at).total_seconds()))


def render_jobs_gauge(counts: dict[str, int]) -> Iterable[str]:
    yield "# HELP ramp_jobs Jobs by status."
    yield "# TYPE ramp_jobs gauge"
    for status in JobStatus:
        yield f'ramp_jobs{{status="{status.value}"}} {counts.get(status.value, 0)}'


def render(counts: dict[str, int]) -> str:
    lines = [*render_jobs_gauge(counts), *DISPATCH_LATENCY.render(), *REQUEST_LATENCY.render()]
    return "\n".join(lines) + "\n"
