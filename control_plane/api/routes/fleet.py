"""GET /fleet/summary: the fleet at a glance."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, Viewer
from control_plane.schemas import FleetSeries, FleetSeriesPoint, FleetSummary
from control_plane.services import fleet

router = APIRouter(prefix=f"{API_PREFIX}/fleet", tags=["fleet"])
MAX_TIMESTAMP = 1e11  # unix seconds (year 5138): later ones cannot be dates


@router.get("/series", response_model=FleetSeries, responses={422: {}})
async def series(principal: Viewer, ctx: Ctx,
                 since: Annotated[float | None, Query(ge=0, le=MAX_TIMESTAMP,
                                                      description="unix seconds; default 6 hours ago")] = None,
                 until: Annotated[float | None, Query(ge=0, le=MAX_TIMESTAMP,
                                                      description="unix seconds; default now")] = None,
                 bucket_s: Annotated[float, Query(gt=0, le=7 * 86400)] = 300.0) -> FleetSeries:
    """Fleet accuracy (labelled, pooled; estimated, mean) and the mean compression of what the
    devices ran, per time bucket of received telemetry."""
    now = time.time()
    until_dt = dt.datetime.fromtimestamp(until if until is not None else now, dt.UTC)
    since_dt = dt.datetime.fromtimestamp(since if since is not None else now - 6 * 3600, dt.UTC)
    points = await ctx.db.run(fleet.series, since=since_dt, until=until_dt, bucket_s=bucket_s)
    return FleetSeries(bucket_s=bucket_s, points=[FleetSeriesPoint(**p) for p in points])


@router.get("/summary", response_model=FleetSummary)
async def summary(principal: Viewer, ctx: Ctx) -> FleetSummary:
    """Devices by state, jobs by status, mean compression of what is deployed, the last hour's
    labelled and estimated accuracy."""
    return FleetSummary(**await ctx.db.run(fleet.summary, ctx.rules()))
