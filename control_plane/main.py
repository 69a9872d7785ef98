"""The FastAPI app: `create_app()` builds it; uvicorn runs `control_plane.main:create_app --factory`.

Importing this module loads no torch and no ray (a test checks it)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from control_plane.api import errors
from control_plane.api.context import AppContext
from control_plane.api.routes import (
    apikeys,
    artifacts,
    assignment,
    device_events,
    devices,
    enroll,
    fleet,
    health,
    jobs,
    noop,
    policies,
    rollouts,
    sketches,
    telemetry,
    versions,
)
from control_plane.artifacts import ArtifactStore, LocalArtifactStore
from control_plane.bus import AsyncBus
from control_plane.keys import load_or_create_signing_key
from control_plane.metrics import BodyLimitMiddleware, Metrics, MetricsMiddleware
from control_plane.services import auth
from control_plane.services.ingest import TelemetryWriter
from control_plane.services.uow import Database
from control_plane.settings import Settings, get_settings
from control_plane.token_cache import TokenCache

logger = logging.getLogger(__name__)

DESCRIPTION = """\
QSAE Fleet control plane. **Devices** (bearer device token, `qd_...`) enroll, send telemetry and
activation sketches, fetch their assignment (ETag, long-poll) and artifacts, and report events.
**Operators** (bearer API key, `qk_...`, roles viewer < operator < admin) manage devices, jobs,
versions, policies and rollouts. Errors are `{"detail": "..."}`.
"""


def create_app(settings: Settings | None = None, *, artifact_store: ArtifactStore | None = None) -> FastAPI:
    """Build the app. Settings default to `get_settings()` (the FLEET_* environment)."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            from control_plane.db.migrate import upgrade

            upgrade(str(settings.database_url))
        bus = AsyncBus(settings.redis_url, settings.redis_prefix, settings.rate_limit_per_minute)
        await bus.start()
        db = Database(str(settings.database_url), settings.db_pool_size, on_commit=bus.publish)
        writer = TelemetryWriter(db.engine, max_batch_rows=settings.ingest_batch_max,
                                 touch_interval_s=settings.touch_interval_s, linger_s=settings.ingest_linger_s)
        tokens = TokenCache(db, ttl_s=settings.token_cache_ttl_s, max_entries=settings.token_cache_size)
        store = artifact_store or LocalArtifactStore(settings.artifact_dir)
        signer = load_or_create_signing_key(settings.signing_key_file)
        ctx = AppContext(settings=settings, db=db, bus=bus, writer=writer, tokens=tokens, store=store,
                         signer=signer, metrics=metrics)
        try:
            try:
                await tokens.start()
                if settings.bootstrap_admin_key:
                    await db.run(auth.ensure_api_key, secret=settings.bootstrap_admin_key, role="admin",
                                 name="bootstrap admin")
            except Exception as exc:  # keep serving: /readyz says what is wrong
                logger.error("startup database step failed (%s); /readyz tells whether the schema needs "
                             "`qsae-fleet db upgrade`", exc)
            await writer.start()
            app.state.ctx = ctx
            gc.freeze()  # what startup built lives forever: keep it out of every GC pass
            logger.info("control plane ready (database %s, redis %s)", db.dialect,
                        "on" if settings.redis_url else "off")
            yield
        finally:
            await writer.stop()
            await bus.close()
            await db.dispose()

    app = FastAPI(title="QSAE Fleet control plane", version="1", description=DESCRIPTION, lifespan=lifespan,
                  openapi_tags=[{"name": "device", "description": "called by edge agents"},
                                {"name": "devices", "description": "operators: devices and actions"},
                                {"name": "ops", "description": "health and metrics"}])
    # Routes are matched in order: the hot device routes first.
    hot = (telemetry, noop) if settings.noop_endpoint else (telemetry,)
    for module in (*hot, assignment, sketches, device_events, artifacts, enroll, devices, fleet, jobs,
                   versions, policies, rollouts, apikeys):
        app.include_router(module.router)
    app.include_router(health.router)
    _mount_dashboard(app)
    _document_raw_bodies(app)
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_sketch_bytes=settings.max_sketch_bytes, body_timeout_s=settings.client_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _mount_dashboard(app: FastAPI) -> None:
    """The operator UI (`dashboards/`) under /dashboard/, when it is installed."""
    try:
        from dashboards import mount
    except ImportError:
        logger.info("no dashboards package: serving the API only")
        return
    mount(app)


def _document_raw_bodies(app: FastAPI) -> None:
    """Routes that parse their own body (telemetry) name their schemas by reference; put those
    schemas into the OpenAPI components."""
    from control_plane.schemas import TelemetryAck, TelemetryBatch

    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in (TelemetryBatch, TelemetryAck):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
                schemas.update(js.pop("$defs", {}))
                schemas[model.__name__] = js
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
