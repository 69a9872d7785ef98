"""Policies: KL budget, minimum compression, accuracy-drop and drift thresholds, interval."""

from __future__ import annotations

from fastapi import APIRouter, Path, status

from control_plane.api import API_PREFIX
from control_plane.api.deps import Admin, Ctx, Operator, Viewer
from control_plane.schemas import PolicyPublic, PolicyValues
from control_plane.services import policies

router = APIRouter(prefix=f"{API_PREFIX}/policies", tags=["policies"])
NamePath = Path(min_length=1, max_length=100, description="`default` or a cohort name")


@router.get("", response_model=list[PolicyPublic])
async def list_policies(principal: Viewer, ctx: Ctx) -> list[PolicyPublic]:
    return await ctx.db.run(policies.list_policies)


@router.get("/{name}", response_model=PolicyPublic, responses={404: {}})
async def get_policy(principal: Viewer, ctx: Ctx, name: str = NamePath) -> PolicyPublic:
    return await ctx.db.run(policies.get_policy, name)


@router.put("/{name}", response_model=PolicyPublic, responses={422: {}})
async def put_policy(body: PolicyValues, principal: Operator, ctx: Ctx, name: str = NamePath) -> PolicyPublic:
    """Create or replace the `default` policy or a cohort's own."""
    return await ctx.db.run(policies.put_policy, name, body, actor=principal.actor)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {}})
async def delete_policy(principal: Admin, ctx: Ctx, name: str = NamePath) -> None:
    """Remove a cohort's policy (it falls back to `default`)."""
    await ctx.db.run(policies.delete_policy, name, actor=principal.actor)
