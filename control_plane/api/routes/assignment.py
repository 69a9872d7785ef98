"""GET /devices/{id}/assignment: what the device should run, with ETag and long-poll."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, CurrentDevice
from control_plane.services import devices

router = APIRouter(prefix=API_PREFIX, tags=["device"])
RECHECK_WITH_REDIS_S = 10.0  # re-read the DB this often even when notifications flow (lost messages)
RECHECK_POLLING_S = 1.0  # without Redis, changes made by other processes are found by polling


def _etag(manifest_sha256: str | None) -> str:
    return f'"{manifest_sha256 or "none"}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get("/devices/{device_id}/assignment",
            responses={200: {"headers": {"ETag": {"description": "quote it back in If-None-Match"}}},
                       304: {"description": "unchanged since the ETag in If-None-Match"},
                       401: {}, 403: {}, 429: {}})
async def get_assignment(device: CurrentDevice, ctx: Ctx,
                         wait: Annotated[float, Query(ge=0, le=3600, description=
                                                      "long-poll: wait up to this many seconds (capped at "
                                                      "FLEET_LONG_POLL_MAX_S) for a change when "
                                                      "If-None-Match matches")] = 0,
                         if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The desired version and its signed manifest. With `If-None-Match` equal to the current ETag
    the answer is 304 (after waiting up to `wait` seconds for a change)."""
    desired, manifest, sha, reason = await ctx.db.run(devices.assignment, device.id)
    etag = _etag(sha)
    if _matches(if_none_match, etag) and wait > 0:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, ctx.settings.long_poll_max_s)
        while (remaining := deadline - loop.time()) > 0:
            step = RECHECK_WITH_REDIS_S if ctx.bus.notifies_across_processes else RECHECK_POLLING_S
            await ctx.bus.wait_assignment(device.id, min(remaining, step))
            desired, manifest, sha, reason = await ctx.db.run(devices.assignment, device.id)
            etag = _etag(sha)
            if not _matches(if_none_match, etag):
                break
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    body = {"desired_version": desired, "manifest": json.loads(manifest) if manifest else None,
            "reason": reason}
    return JSONResponse(body, headers=headers)
