"""Liveness, readiness and Prometheus metrics (outside /api/v1)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from control_plane.api.deps import Ctx
from control_plane.schemas import Health
from control_plane.services import fleet

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no dependency checks)."""
    return Health(status="ok")


def _db_check(s: Session) -> str | None:
    # Read Alembic's table directly: MigrationContext logs at INFO on every probe.
    try:
        with s.begin_nested():
            return s.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        s.execute(text("SELECT 1"))  # reachable, but never migrated
        return None


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(ctx: Ctx) -> Any:
    """Ready to serve: the database answers and is migrated, Redis (when configured) answers,
    the telemetry writer runs."""
    from control_plane.db.migrate import head_revision

    checks: dict[str, str] = {}
    try:
        rev = await ctx.db.run(_db_check)
        head = head_revision()
        checks["database"] = "ok" if rev == head else f"schema at {rev}, expected {head}: run `qsae-fleet db upgrade`"
    except Exception as exc:  # any failure means not ready
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if ctx.bus.redis is not None:
        try:
            await ctx.bus.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    checks["telemetry_writer"] = "ok" if ctx.writer.running else "stopped"
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain; version=0.0.4": {}}}})
async def metrics(ctx: Ctx) -> Response:
    """Prometheus exposition: requests, ingest counts, queue depth, jobs by status, devices by state."""
    g = await ctx.db.run(fleet.gauges, ctx.rules())
    ctx.metrics.set_gauges(g, len(ctx.tokens._entries), ctx.writer.queued, ctx.writer.batches)
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
