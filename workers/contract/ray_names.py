"""What a service job is called on Ray, so a reader of the Ray dashboard knows what runs and for
whom: the Ray job's metadata and the Ray Train / Tune run's name. Pure and torch-free (the service
builds them; the driver reads the run name from its environment).

Ray shows a job's metadata in its Jobs view and a run's name in its Train / Tune views; both were
opaque before (``ramp-1-a1-6c7b1cd9``, ``{ramp_job_id, ramp_attempt}``, a run named ``train``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

# The Ray job's environment variable carrying the run name (set by the service per attempt).
RUN_NAME_ENV = "RAMP_RAY_RUN_NAME"
# Ray job metadata values are strings, shown whole in the dashboard: keep each one short.
MAX_VALUE_CHARS = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _text(value: Any) -> str:
    return ("" if value is None else str(value))[:MAX_VALUE_CHARS]


def spec_field(spec: Mapping[str, Any], key: str) -> str | None:
    """``spec[key]``, or a sweep's ``spec.base[key]`` (a sweep trains its base's method/data)."""
    value = spec.get(key)
    base = spec.get("base")
    if value is None and isinstance(base, Mapping):
        value = base.get(key)
    return value if isinstance(value, str) else None


def run_name(job_id: int, kind: str, spec: Mapping[str, Any]) -> str:
    """``ramp-<id>-<method>-<kind>``: the same for every attempt of a job (a retried run resumes
    the run of that name), and a path component (Ray keeps the run under ``<storage>/<name>``)."""
    method = spec_field(spec, "method") or "none"
    return _UNSAFE.sub("_", f"ramp-{int(job_id)}-{method}-{kind}")[:100]


def job_metadata(*, job_id: int, attempt: int, kind: str, spec: Mapping[str, Any], owner: str | None,
                 page_url: str) -> dict[str, str]:
    """The Ray job's metadata: the service's job id and attempt (``ramp_job_id`` and
    ``ramp_attempt``, which the service's own tooling reads), what it trains and for whom, and the
    URL of its page. Empty values are left out."""
    meta = {
        "ramp_job_id": str(int(job_id)), "ramp_attempt": str(int(attempt)), "ramp_kind": _text(kind),
        "ramp_method": _text(spec_field(spec, "method")), "ramp_dataset": _text(spec_field(spec, "dataset")),
        "ramp_model": _text(spec_field(spec, "model")), "ramp_owner": _text(owner),
        "ramp_run_name": run_name(job_id, kind, spec), "ramp_page_url": _text(page_url),
    }
    return {k: v for k, v in meta.items() if v}


def current_run_name(default: str) -> str:
    """The run name this driver's Ray job was given (``RUN_NAME_ENV``), else ``default`` (a run
    outside the service, e.g. ``rampctl train``)."""
    name = os.environ.get(RUN_NAME_ENV, "").strip()
    return _UNSAFE.sub("_", name)[:100] if name else default
