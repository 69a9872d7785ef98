"""POST /_noop: the ingest benchmark's baseline (same app, middleware and JSON parsing, no auth,
no database). Served only with FLEET_NOOP_ENDPOINT=true."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api import API_PREFIX
from control_plane.schemas import TelemetryAck, TelemetryBatch

router = APIRouter(prefix=API_PREFIX, tags=["ops"], include_in_schema=False)


@router.post("/_noop", response_model=TelemetryAck)
async def noop(body: TelemetryBatch) -> TelemetryAck:
    return TelemetryAck(acked=[r.seq for r in body.records])
