"""What a job's attempt is on Ray: its submission id, the driver's command line, the resources the
driver reserves and its environment. Pure functions of the job row and the settings."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

from service.core.config import Settings
from service.db.models import Job
from workers.contract.ray_names import RUN_NAME_ENV, job_metadata, run_name

DRIVER_MODULE = "workers.jobs.driver"


def submission_id(job: Job, attempt: int | None = None) -> str:
    """Deterministic per (job, attempt), so a submit whose answer was lost can be found again.

    The creation time makes ids from two databases (a reset embedded DB, two installations
    sharing one Ray cluster) differ even for equal job ids. ``attempt``: another attempt's id.
    """
    stamp = hashlib.sha256(f"{job.id}:{job.created_at.isoformat()}".encode()).hexdigest()[:8]
    return f"ramp-{job.id}-a{job.attempt if attempt is None else attempt}-{stamp}"


def driver_entrypoint(python: str, job_id: int) -> str:
    return f"{shlex.quote(python)} -m {DRIVER_MODULE} --job-id {int(job_id)}"


def entrypoint_resources(kind: str, spec: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) the driver itself reserves on Ray.

    Training and sweeps run on Ray Train / Tune workers that reserve their own resources, so
    their driver reserves none (reserving them twice would deadlock a small cluster); an eval
    job runs in the driver and takes one worker's worth.
    """
    if kind in ("train", "finetune", "sweep"):
        return 0.0, 0.0
    res = spec.get("resources") or {}
    cpus = float(res.get("cpus_per_worker") or 1.0)
    gpus = 1.0 if res.get("use_gpu") else 0.0
    return cpus, gpus


def driver_env(settings: Settings, job: Job, token_file: Path) -> dict[str, str]:
    """The Ray job's environment. No secret in it: Ray's Jobs API shows it to anyone who can list
    jobs, so the token travels as the path of a 0600 file on the shared storage."""
    return {
        "RAMP_SERVICE_URL": str(settings.public_url),
        "RAMP_JOB_TOKEN_FILE": str(token_file),
        "RAMP_STORAGE_DIR": str(settings.storage_dir),
        "RAMP_JOB_ID": str(job.id),
        "RAMP_JOB_ATTEMPT": str(job.attempt),
        RUN_NAME_ENV: run_name(job.id, job.kind, job.spec),
        # Ray's job stop sends SIGTERM and, by default, SIGKILL 3 s later: too soon for a Train
        # run to stop at its next step and keep its checkpoint.
        "RAY_JOB_STOP_WAIT_TIME_S": "60",
    }


def ray_metadata(settings: Settings, job: Job, owner: str | None) -> dict[str, str]:
    """The Ray job's metadata (``workers.contract.ray_names.job_metadata``) with the job's page on
    this service (``external_url``)."""
    return job_metadata(job_id=job.id, attempt=job.attempt, kind=job.kind, spec=job.spec, owner=owner,
                        page_url=f"{settings.external_url}/ui/jobs/{job.id}")
