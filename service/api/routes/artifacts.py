"""A job's files: GET /v1/jobs/{id}/artifacts and /v1/jobs/{id}/artifacts/{name} (bearer token)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from service.api.deps import PrincipalDep, SessionDep, SettingsDep, get_current_token
from service.api.schemas import ArtifactListOut, ArtifactOut
from service.auth.access import owned_job

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], dependencies=[Depends(get_current_token)])


def _list_artifacts(root: Path) -> list[ArtifactOut]:
    out: list[ArtifactOut] = []
    if not root.is_dir():
        return out
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                real = path.resolve(strict=True)
                real.relative_to(real_root)  # symlinks pointing outside are not artifacts
                st = real.stat()
            except (OSError, ValueError):
                continue
            if not real.is_file():
                continue
            out.append(
                ArtifactOut(
                    name=path.relative_to(root).as_posix(),
                    size=st.st_size,
                    modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
                )
            )
        dirnames.sort()
    out.sort(key=lambda a: a.name)
    return out


def safe_artifact_path(root: Path, name: str) -> Path:
    """The file ``name`` under ``root``; 400 for any name that could leave it, 404 if absent."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or len(name) > 1024:
        raise HTTPException(400, detail="invalid artifact name")
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") or p.startswith("~") for p in parts) or PurePosixPath(name).is_absolute():
        raise HTTPException(400, detail="artifact names must be relative paths inside the job's directory")
    candidate = root.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(404, detail=f"artifact {name!r} not found") from None
    try:
        real.relative_to(root.resolve())
    except ValueError:
        raise HTTPException(400, detail="artifact path leaves the job's directory") from None
    if not real.is_file():
        raise HTTPException(404, detail=f"artifact {name!r} not found")
    return real


@router.get("/{job_id}/artifacts", response_model=ArtifactListOut)
def list_artifacts(
    job_id: int, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> ArtifactListOut:
    owned_job(session, principal, job_id)
    return ArtifactListOut(job_id=job_id, artifacts=_list_artifacts(settings.job_dir(job_id)))


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    responses={200: {
        "description": "the file's bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }},
)
def download_artifact(
    job_id: int, name: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> FileResponse:
    owned_job(session, principal, job_id)  # before the name is looked at: 404, never 400, for others
    path = safe_artifact_path(settings.job_dir(job_id), name)
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")
