"""Model versions: list, detail with manifest, status changes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, Operator, Viewer
from control_plane.schemas import MAX_INT, VersionList, VersionPublic, VersionStatus, VersionStatusUpdate
from control_plane.services import versions

router = APIRouter(prefix=f"{API_PREFIX}/versions", tags=["versions"])


def _public(ctx: Ctx, v: Any) -> VersionPublic:
    return VersionPublic.model_validate(v).model_copy(update={"mlflow_url": ctx.mlflow_url(v.mlflow_run_id, v.mlflow_experiment_id)})


@router.get("", response_model=VersionList)
async def list_versions(principal: Viewer, ctx: Ctx, device_id: str | None = None,
                        base_model: str | None = None, status: VersionStatus | None = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0) -> VersionList:
    items, total = await ctx.db.run(versions.list_versions, device_id=device_id, base_model=base_model,
                                    status=status, limit=limit, offset=offset)
    return VersionList(items=[_public(ctx, v) for v in items], total=total)


@router.get("/{version_id}", response_model=VersionPublic, responses={404: {}})
async def get_version(version_id: str, principal: Viewer, ctx: Ctx) -> VersionPublic:
    return _public(ctx, await ctx.db.run(versions.get_version, version_id))


@router.get("/{version_id}/manifest", responses={404: {}})
async def get_manifest(version_id: str, principal: Viewer, ctx: Ctx) -> dict[str, Any]:
    """The signed manifest, exactly as devices receive it."""
    return await ctx.db.run(versions.manifest_of, version_id)


@router.patch("/{version_id}", response_model=VersionPublic, responses={404: {}})
async def set_status(version_id: str, body: VersionStatusUpdate, principal: Operator, ctx: Ctx) -> VersionPublic:
    """Approve, reject or retire a version (rejected and retired ones cannot be assigned)."""
    return _public(ctx, await ctx.db.run(versions.set_status, version_id, body.status, actor=principal.actor))
