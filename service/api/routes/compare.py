"""GET /v1/compare?ids=1,2,...: jobs side by side with exact paired tests (bearer token).

Every id must name a job the caller may see (another owner's job is the 404 of a missing one).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.api.deps import PrincipalDep, SessionDep, get_current_token
from service.api.ids import parse_id
from service.api.schemas import CompareOut
from service.auth.access import owned_job
from service.jobs.comparison import MAX_COMPARE, compare_jobs
from service.jobs.specs import SpecError

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(get_current_token)])


def parse_ids(raw: list[str] | None) -> list[int]:
    """Job ids from repeated and/or comma-separated ``ids`` (422 naming the bad one)."""
    out: list[int] = []
    for item in raw or []:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            job_id = parse_id(part)
            if job_id is None:
                raise SpecError([("query.ids", f"{part[:40]!r} is not a job id")])
            if job_id not in out:
                out.append(job_id)
    if not out:
        raise SpecError([("query.ids", "give at least one job id, e.g. ?ids=1,2")])
    if len(out) > MAX_COMPARE:
        raise SpecError([("query.ids", f"at most {MAX_COMPARE} jobs at once, got {len(out)}")])
    return out


IdsQuery = Annotated[list[str] | None, Query(description="job ids, repeated or comma-separated")]


@router.get("/compare", response_model=CompareOut)
def compare(session: SessionDep, principal: PrincipalDep, ids: IdsQuery = None) -> CompareOut:
    jobs = [owned_job(session, principal, job_id) for job_id in parse_ids(ids)]
    return CompareOut.model_validate(compare_jobs(jobs))
