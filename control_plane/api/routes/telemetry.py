"""POST /devices/{id}/telemetry: batches of records, idempotent by seq, acked after commit."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, CurrentDevice
from control_plane.errors import ValidationFailedError
from control_plane.schemas import TelemetryAck, TelemetryBatch

router = APIRouter(prefix=API_PREFIX, tags=["device"])


@router.post("/devices/{device_id}/telemetry", response_model=TelemetryAck,
             responses={401: {}, 403: {}, 413: {}, 422: {}, 429: {}})
async def post_telemetry(body: TelemetryBatch, device: CurrentDevice, ctx: Ctx) -> Response:
    """Store a batch of telemetry records. The answer lists every seq that is now stored (a
    re-sent record is acked again, not stored twice); delete from the outbox what is acked."""
    cap = ctx.settings.max_telemetry_records
    if len(body.records) > cap:
        raise ValidationFailedError(f"{len(body.records)} records in one request; send at most {cap}")
    acked = await ctx.writer.submit(device.id, body.records)
    ctx.metrics.ingested.labels("telemetry").inc(len(acked))
    # Encoded here: re-validating the answer against the response model costs per request.
    return Response(b'{"acked":[' + ",".join(map(str, acked)).encode() + b"]}", media_type="application/json")
