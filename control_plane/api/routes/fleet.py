"""GET /fleet/summary: the fleet at a glance."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, Viewer
from control_plane.schemas import FleetSummary
from control_plane.services import fleet

router = APIRouter(prefix=f"{API_PREFIX}/fleet", tags=["fleet"])


@router.get("/summary", response_model=FleetSummary)
async def summary(principal: Viewer, ctx: Ctx) -> FleetSummary:
    """Devices by state, jobs by status, mean compression of what is deployed, the last hour's
    labelled and estimated accuracy."""
    return FleetSummary(**await ctx.db.run(fleet.summary, ctx.rules()))
