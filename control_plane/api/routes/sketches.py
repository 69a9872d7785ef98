"""POST /devices/{id}/sketches: one activation sketch in its binary wire format."""

from __future__ import annotations

from fastapi import APIRouter, Request

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, CurrentDevice
from control_plane.errors import PayloadTooLargeError, PermissionDeniedError, ValidationFailedError
from control_plane.schemas import SketchAck
from control_plane.services import sketches
from qsae_shared.errors import SizeLimitError, WireFormatError
from qsae_shared.sketch import SketchLimits, parse_sketch

router = APIRouter(prefix=API_PREFIX, tags=["device"])


@router.post(
    "/devices/{device_id}/sketches", response_model=SketchAck,
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"},
        "example": "QSKT\\x01\\x00... (qsae_shared.sketch wire format v1)"}}}},
    responses={401: {}, 403: {"description": "the sketch names another device"},
               413: {"description": "over FLEET_MAX_SKETCH_BYTES"},
               422: {"description": "malformed sketch; `detail` says what is wrong"}, 429: {}})
async def post_sketch(request: Request, device: CurrentDevice, ctx: Ctx) -> SketchAck:
    """Upload a sketch (`application/octet-stream`). Idempotent by the sketch's seq: a seq already
    stored answers `stored: false`."""
    cap = ctx.settings.max_sketch_bytes
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            ctx.metrics.rejected.labels("sketch", "too_large").inc()
            raise PayloadTooLargeError(f"sketch upload over the cap of {cap} bytes; build smaller sketches")
    data = bytes(body)
    try:
        sketch = parse_sketch(data, SketchLimits(max_bytes=cap))
    except SizeLimitError as exc:
        ctx.metrics.rejected.labels("sketch", "too_large").inc()
        raise PayloadTooLargeError(str(exc)) from exc
    except WireFormatError as exc:
        ctx.metrics.rejected.labels("sketch", "malformed").inc()
        raise ValidationFailedError(str(exc)) from exc
    if sketch.device_id != device.id:
        raise PermissionDeniedError(f"the sketch is from device {sketch.device_id!r}; this token belongs "
                                    f"to {device.id}")
    seq, stored = await ctx.db.run(sketches.store_sketch, device.id, data, sketch)
    if stored:
        ctx.metrics.ingested.labels("sketch").inc()
        ctx.metrics.ingest_bytes.labels("sketch").inc(len(data))
    return SketchAck(seq=seq, stored=stored)
