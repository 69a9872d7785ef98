"""Typed dependencies: the app context, the caller (device or operator), role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control_plane import security
from control_plane.api.context import AppContext
from control_plane.errors import AuthenticationError, PermissionDeniedError
from control_plane.services.auth import Principal

bearer = HTTPBearer(auto_error=False, description="a device token (qd_...) or an operator API key (qk_...)")


async def get_ctx(request: Request) -> AppContext:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, on every request
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def _principal(ctx: AppContext, creds: HTTPAuthorizationCredentials | None) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise AuthenticationError("missing credentials: send `Authorization: Bearer <device token or API key>`")
    token = creds.credentials
    if token.startswith(security.DEVICE_TOKEN_PREFIX):
        kind = "device"
    elif token.startswith(security.API_KEY_PREFIX):
        kind = "operator"
    else:
        raise AuthenticationError("unknown token format: a device token starts with qd_, an API key with qk_")
    p = await ctx.tokens.lookup(security.hash_secret(token), kind)
    if p is None:
        raise AuthenticationError(f"this {'device token' if kind == 'device' else 'API key'} is unknown or "
                                  "revoked; re-enroll the device or ask an admin for a new key")
    return p


async def current_principal(ctx: Ctx, creds: Credentials) -> Principal:
    return await _principal(ctx, creds)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def authenticate_device(request: Request, device_id: str) -> Principal:
    """The calling device, which must be the one in the path; counts toward its rate limit. Called
    directly by the telemetry route (no dependency resolution on the hottest path)."""
    ctx: AppContext = request.app.state.ctx
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    creds = HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip()) if token else None
    return await _check_device(ctx, await _principal(ctx, creds), device_id)


async def current_device(request: Request, creds: Credentials,
                         device_id: Annotated[str, Path(max_length=40)]) -> Principal:
    """The calling device, which must be the one in the path; counts toward its rate limit."""
    ctx: AppContext = request.app.state.ctx
    return await _check_device(ctx, await _principal(ctx, creds), device_id)


async def _check_device(ctx: AppContext, principal: Principal, device_id: str) -> Principal:
    if principal.kind != "device":
        raise PermissionDeniedError("this endpoint is for devices: authenticate with the device's token")
    if principal.id != device_id:
        raise PermissionDeniedError(f"this token belongs to device {principal.id}; a device may only "
                                    f"access its own resources, not those of {device_id}")
    await ctx.bus.hit_rate_limit(principal.id)
    return principal


CurrentDevice = Annotated[Principal, Depends(current_device)]


def require_role(role: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.kind != "operator":
            raise PermissionDeniedError("this endpoint is for operators: use an API key (qk_...)")
        if not security.role_allows(principal.role, role):
            raise PermissionDeniedError(f"this needs the {role} role; your key has {principal.role}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require_role("viewer"))]
Operator = Annotated[Principal, Depends(require_role("operator"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
