"""Operator API keys (admin only) and the audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from control_plane.api import API_PREFIX
from control_plane.api.deps import Admin, Ctx, Viewer
from control_plane.schemas import MAX_INT, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, AuditPublic, Me
from control_plane.services import audit, auth

router = APIRouter(prefix=API_PREFIX, tags=["admin"])


@router.get("/me", response_model=Me)
async def me(principal: Viewer, ctx: Ctx) -> Me:
    """Who this API key is: its id, name and role (the dashboard shows or hides actions by it)."""
    key = await ctx.db.run(auth.get_api_key, principal.id)
    return Me.model_validate(key, from_attributes=True)


@router.post("/apikeys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
async def create_api_key(body: ApiKeyCreate, principal: Admin, ctx: Ctx) -> ApiKeyCreated:
    """A new key; the secret is in this answer only."""
    key, secret = await ctx.db.run(auth.create_api_key, name=body.name, role=body.role, actor=principal.actor)
    return ApiKeyCreated(id=key.id, name=key.name, role=body.role, api_key=secret)


@router.get("/apikeys", response_model=list[ApiKeyPublic])
async def list_api_keys(principal: Admin, ctx: Ctx) -> list[ApiKeyPublic]:
    return [ApiKeyPublic.model_validate(k) for k in await ctx.db.run(auth.list_api_keys)]


@router.delete("/apikeys/{key_id}", response_model=ApiKeyPublic, responses={404: {}})
async def revoke_api_key(key_id: str, principal: Admin, ctx: Ctx) -> ApiKeyPublic:
    """Revoke a key: it stops working within 1 second on every replica."""
    key = await ctx.db.run(auth.revoke_api_key, key_id, actor=principal.actor)
    ctx.tokens.forget(key.key_hash)
    return ApiKeyPublic.model_validate(key)


@router.get("/audit", response_model=list[AuditPublic])
async def list_audit(principal: Viewer, ctx: Ctx, subject_type: str | None = None, subject_id: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0) -> list[AuditPublic]:
    rows = await ctx.db.run(audit.list_events, subject_type=subject_type, subject_id=subject_id,
                            limit=limit, offset=offset)
    return [AuditPublic.model_validate(r) for r in rows]
