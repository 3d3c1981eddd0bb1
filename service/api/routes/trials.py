"""Sweep trials: GET /v1/jobs/{id}/trials and /v1/jobs/{id}/trials/{trial_id} (bearer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from service import repository, trials_repository
from service.api.deps import SessionDep, get_current_token
from service.db.models import Job, Trial
from service.schemas import TrialListOut, TrialOut

router = APIRouter(prefix="/v1/jobs", tags=["sweeps"], dependencies=[Depends(get_current_token)])


def trial_out(trial: Trial, metric: str, *, history: bool = True) -> TrialOut:
    return TrialOut(
        trial_id=trial.trial_id,
        index=trial.trial_index,
        attempt=trial.attempt,
        status=trial.status,
        config=trial.config or {},
        score=trials_repository.score(trial, metric),
        metrics=list(trial.metrics or []) if history else None,
        final=trial.final,
        checkpoint=trial.checkpoint,
        error=trial.error,
        spec=trial.spec,
        started_at=trial.started_at,
        ended_at=trial.ended_at,
        updated_at=trial.updated_at,
    )


def _sweep(session: SessionDep, job_id: int) -> Job:
    job = repository.get_job(session, job_id)
    try:
        trials_repository.require_sweep(job)
    except trials_repository.NotASweep as exc:
        raise HTTPException(404, detail=str(exc)) from None
    return job


@router.get("/{job_id}/trials", response_model=TrialListOut)
def list_trials(
    job_id: int,
    session: SessionDep,
    history: Annotated[bool, Query(description="include each trial's per-epoch metrics")] = True,
) -> TrialListOut:
    job = _sweep(session, job_id)
    metric, mode = str(job.spec.get("metric", "union")), str(job.spec.get("mode", "max"))
    rows = trials_repository.list_trials(session, job_id)
    best = trials_repository.best(rows, metric, mode)
    return TrialListOut(
        job_id=job.id,
        status=job.status,
        metric=metric,
        mode=mode,
        param_keys=list((job.spec.get("param_space") or {}).keys()),
        best_trial_id=best.trial_id if best is not None else None,
        best_score=trials_repository.score(best, metric) if best is not None else None,
        trials=[trial_out(t, metric, history=history) for t in rows],
    )


@router.get("/{job_id}/trials/{trial_id}", response_model=TrialOut)
def get_trial(job_id: int, trial_id: str, session: SessionDep) -> TrialOut:
    job = _sweep(session, job_id)
    try:
        row = trials_repository.get_trial(session, job_id, trial_id)
    except trials_repository.TrialNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from None
    return trial_out(row, str(job.spec.get("metric", "union")))
