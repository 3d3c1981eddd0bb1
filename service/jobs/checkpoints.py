"""Where a finetune or eval job starts from when its request names another job (or a sweep's trial)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.orm import Session

from service.core.config import Settings
from service.db.models import Job
from service.jobs import store
from service.jobs.specs import CheckpointResolver, ResolvedCheckpoint
from service.state import JobStatus
from service.sweeps import trials


def checkpoint_resolver(session: Session, settings: Settings) -> CheckpointResolver:
    """(job id, trial or None) -> the checkpoint a finetune/eval job starts from."""

    def resolve(job_id: int, trial: str | None) -> ResolvedCheckpoint:
        try:
            src = store.get_job(session, job_id)
        except store.JobNotFound:
            raise ValueError(f"job {job_id} does not exist") from None
        if src.kind == trials.SWEEP_KIND:
            return _sweep_checkpoint(session, settings, src, trial)
        if trial is not None:
            raise ValueError(f"job {job_id} is a {src.kind} job; 'trial' names a trial of a sweep")
        if src.kind not in ("train", "finetune"):
            raise ValueError(
                f"job {job_id} is a {src.kind} job; only train/finetune jobs and sweeps make checkpoints"
            )
        if src.status != JobStatus.SUCCEEDED.value:
            raise ValueError(f"job {job_id} is {src.status}; its checkpoint is usable once it succeeded")
        return ResolvedCheckpoint(str(settings.layout.checkpoint_dir(job_id)))

    return resolve


def _sweep_checkpoint(
    session: Session, settings: Settings, sweep: Job, trial: str | None
) -> ResolvedCheckpoint:
    """A named trial's checkpoint (once that trial finished), else the best trial's (once the
    sweep succeeded: the best is only final then)."""
    if trial is None:
        if sweep.status != JobStatus.SUCCEEDED.value:
            raise ValueError(
                f"sweep {sweep.id} is {sweep.status}; its best checkpoint is usable once it succeeded "
                "(or name a finished trial with 'trial')"
            )
        trial = (sweep.result or {}).get("best_trial_id")
        if not isinstance(trial, str):
            rows = trials.list_trials(session, sweep.id)
            metric, mode = sweep.spec.get("metric", "union"), sweep.spec.get("mode", "max")
            chosen = trials.best(rows, metric, mode)
            if chosen is None:
                raise ValueError(f"sweep {sweep.id} has no trial that reported its metric")
            trial = chosen.trial_id
    try:
        row = trials.get_trial(session, sweep.id, trial)
    except trials.TrialNotFound as exc:
        raise ValueError(str(exc)) from None
    if row.status not in trials.FINISHED_WITH_CHECKPOINT:
        raise ValueError(
            f"trial {trial} of sweep {sweep.id} is {row.status}; its checkpoint is usable once it "
            "finished (succeeded, or stopped early by the scheduler)"
        )
    path = _inside_job_dir(settings.job_dir(sweep.id), row.checkpoint)
    if path is None:
        raise ValueError(f"trial {trial} of sweep {sweep.id} has no checkpoint inside the sweep's directory")
    return ResolvedCheckpoint(str(path), trial)


def _inside_job_dir(job_dir: Path, stored: str | None) -> Path | None:
    """The stored trial checkpoint under ``job_dir``, symlinks resolved, if it stays inside it (rows
    stored before reports were confined, or a link planted in the directory, may point elsewhere)."""
    relative = trials.confined_checkpoint(stored)
    if relative is None:
        return None
    real_root = Path(os.path.realpath(job_dir))
    real = Path(os.path.realpath(job_dir / relative))
    if real != real_root and real_root not in real.parents:
        return None
    return job_dir / relative


def recording(resolver: CheckpointResolver) -> tuple[CheckpointResolver, set[str]]:
    """``resolver`` plus the set of paths it handed out: those came from job ids (and the
    caller's right to them was checked), so path confinement lets them into the storage."""
    seen: set[str] = set()

    def resolve(job_id: int, trial: str | None) -> ResolvedCheckpoint:
        found = resolver(job_id, trial)
        seen.add(found.path)
        return found

    return resolve, seen
