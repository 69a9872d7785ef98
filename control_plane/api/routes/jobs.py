"""Jobs: the queue as operators see it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, Operator, Viewer
from control_plane.schemas import MAX_INT, JobList, JobPublic, JobStatus
from control_plane.services import jobs

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["jobs"])


@router.get("", response_model=JobList)
async def list_jobs(principal: Viewer, ctx: Ctx, status: JobStatus | None = None,
                    device_id: str | None = None, kind: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0) -> JobList:
    items, total = await ctx.db.run(jobs.list_jobs, status=status, device_id=device_id, kind=kind,
                                    limit=limit, offset=offset)
    return JobList(items=[JobPublic.model_validate(j) for j in items], total=total)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {}})
async def get_job(job_id: Annotated[int, Path(ge=0, le=MAX_INT)], principal: Viewer, ctx: Ctx) -> JobPublic:
    return JobPublic.model_validate(await ctx.db.run(jobs.get_job, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses={404: {}, 409: {}})
async def cancel_job(job_id: Annotated[int, Path(ge=0, le=MAX_INT)], principal: Operator, ctx: Ctx) -> JobPublic:
    """Cancel a queued or running job (a running one stops at its next progress report)."""
    return JobPublic.model_validate(await ctx.db.run(jobs.cancel_job, job_id, actor=principal.actor))
