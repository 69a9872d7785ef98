"""POST /devices/{id}/events: what the agent did with an assignment."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, CurrentDevice
from control_plane.schemas import DeviceEventBatch, EventAck
from control_plane.services import events

router = APIRouter(prefix=API_PREFIX, tags=["device"])


@router.post("/devices/{device_id}/events", response_model=EventAck,
             responses={401: {}, 403: {}, 413: {}, 422: {}, 429: {}})
async def post_events(body: DeviceEventBatch, device: CurrentDevice, ctx: Ctx) -> EventAck:
    """Report downloaded / verified / applied / rejected / rolled_back / failed, with reasons.
    Idempotent by event uuid; `applied` sets the device's deployed version."""
    acked = await ctx.db.run(events.record_events, device.id, body.events)
    ctx.metrics.ingested.labels("event").inc(len(body.events))
    return EventAck(acked=acked)
