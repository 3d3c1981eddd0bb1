"""Sweep trials: GET /v1/jobs/{id}/trials and /v1/jobs/{id}/trials/{trial_id} (bearer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from service.api.deps import PrincipalDep, SessionDep, get_current_token
from service.api.schemas import TrialListOut, TrialOut
from service.auth.access import Principal, owned_job
from service.db.models import Job, Trial
from service.sweeps import trials

router = APIRouter(prefix="/v1/jobs", tags=["sweeps"], dependencies=[Depends(get_current_token)])


def trial_out(trial: Trial, metric: str, *, history: bool = True) -> TrialOut:
    return TrialOut.of(trial, trials.score(trial, metric), history=history)


def _sweep(session: SessionDep, principal: Principal, job_id: int) -> Job:
    job = owned_job(session, principal, job_id)
    try:
        trials.require_sweep(job)
    except trials.NotASweep as exc:
        raise HTTPException(404, detail=str(exc)) from None
    return job


@router.get("/{job_id}/trials", response_model=TrialListOut)
def list_trials(
    job_id: int,
    session: SessionDep,
    principal: PrincipalDep,
    history: Annotated[bool, Query(description="include each trial's per-epoch metrics")] = True,
) -> TrialListOut:
    job = _sweep(session, principal, job_id)
    metric, mode = str(job.spec.get("metric", "union")), str(job.spec.get("mode", "max"))
    rows = trials.list_trials(session, job_id)
    best = trials.best(rows, metric, mode)
    return TrialListOut(
        job_id=job.id,
        status=job.status,
        metric=metric,
        mode=mode,
        param_keys=list((job.spec.get("param_space") or {}).keys()),
        best_trial_id=best.trial_id if best is not None else None,
        best_score=trials.score(best, metric) if best is not None else None,
        trials=[trial_out(t, metric, history=history) for t in rows],
    )


@router.get("/{job_id}/trials/{trial_id}", response_model=TrialOut)
def get_trial(job_id: int, trial_id: str, session: SessionDep, principal: PrincipalDep) -> TrialOut:
    job = _sweep(session, principal, job_id)
    try:
        row = trials.get_trial(session, job_id, trial_id)
    except trials.TrialNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from None
    return trial_out(row, str(job.spec.get("metric", "union")))
