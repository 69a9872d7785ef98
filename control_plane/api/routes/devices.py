"""Operator API for devices: create (one-time enrollment token), list, detail, revoke, and the
actions on one device: re-prune, roll back, pin."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, status

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, Operator, Viewer
from control_plane.db.models import Device
from control_plane.schemas import (
    MAX_INT,
    DeviceCreate,
    DeviceCreated,
    DeviceDetail,
    DeviceEventPublic,
    DeviceList,
    DevicePublic,
    DeviceState,
    JobEnqueued,
    JobPublic,
    PinRequest,
    RepruneRequest,
    RollbackRequest,
    SketchPublic,
    TelemetryPublic,
    VersionPublic,
)
from control_plane.services import devices, jobs

router = APIRouter(prefix=f"{API_PREFIX}/devices", tags=["devices"])


@router.post("", response_model=DeviceCreated, status_code=status.HTTP_201_CREATED,
             responses={409: {"description": "name taken"}})
async def create_device(body: DeviceCreate, principal: Operator, ctx: Ctx) -> DeviceCreated:
    """Register a device. The enrollment token in the answer is shown once; hand it to the device
    (`qsae-agent enroll`)."""
    d, token = await ctx.db.run(devices.create_device, name=body.name, labels=body.labels,
                                base_model=body.base_model, actor=principal.actor,
                                enrollment_ttl_s=ctx.settings.enrollment_ttl_s)
    return _created(d, token)


@router.get("", response_model=DeviceList)
async def list_devices(principal: Viewer, ctx: Ctx,
                       cohort: str | None = None, state: DeviceState | None = None,
                       base_model: str | None = None,
                       q: Annotated[str | None, Query(max_length=200, description="name contains / id prefix")] = None,
                       sort: Literal["name", "created_at", "last_seen_at", "drift_score", "cohort", "state",
                                     "compression_ratio"] = "name",
                       order: Literal["asc", "desc"] = "asc",
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                       offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0) -> DeviceList:
    items, total = await ctx.db.run(devices.list_devices, ctx.rules(), cohort=cohort, state=state,
                                    base_model=base_model, q=q, sort=sort, descending=order == "desc",
                                    limit=limit, offset=offset)
    return DeviceList(items=[DevicePublic.model_validate(d) for d in items], total=total)


@router.get("/{device_id}", response_model=DeviceDetail, responses={404: {}})
async def device_detail(device_id: str, principal: Viewer, ctx: Ctx,
                        telemetry_limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> DeviceDetail:
    """One device with its recent telemetry (the time series), sketches, events, jobs and versions."""
    d = await ctx.db.run(devices.device_detail, device_id, ctx.rules(), telemetry_limit=telemetry_limit)
    return DeviceDetail(
        device=DevicePublic.model_validate(d["device"]),
        telemetry=[TelemetryPublic.model_validate(t) for t in d["telemetry"]],
        sketches=[SketchPublic.model_validate(x) for x in d["sketches"]],
        events=[DeviceEventPublic.model_validate(e) for e in d["events"]],
        jobs=[JobPublic.model_validate(j) for j in d["jobs"]],
        versions=[VersionPublic.model_validate(v).model_copy(update={"mlflow_url": ctx.mlflow_url(v.mlflow_run_id, v.mlflow_experiment_id)})
                  for v in d["versions"]])


async def _public(ctx: Ctx, device_id: str) -> DevicePublic:
    return DevicePublic.model_validate(await ctx.db.run(devices.device_with_state, device_id, ctx.rules()))


@router.delete("/{device_id}", response_model=DevicePublic, responses={404: {}})
async def revoke_device(device_id: str, principal: Operator, ctx: Ctx) -> DevicePublic:
    """Revoke a device: its token stops working within 1 second on every replica."""
    d = await ctx.db.run(devices.revoke_device, device_id, actor=principal.actor)
    ctx.tokens.forget(d.token_hash)
    return await _public(ctx, device_id)


@router.post("/{device_id}/enrollment", response_model=DeviceCreated, responses={404: {}, 409: {}})
async def reissue_enrollment(device_id: str, principal: Operator, ctx: Ctx) -> DeviceCreated:
    """A new one-time enrollment token for a device that lost its credentials (the old token stops
    working)."""
    old = await ctx.db.run(devices.get_device, device_id)
    d, token = await ctx.db.run(devices.reissue_enrollment, device_id, actor=principal.actor,
                                enrollment_ttl_s=ctx.settings.enrollment_ttl_s)
    ctx.tokens.forget(old.token_hash)
    return _created(d, token)


def _created(d: Device, token: str) -> DeviceCreated:
    if d.enrollment_expires_at is None:
        raise RuntimeError(f"device {d.id} was given an enrollment token without an expiry")
    return DeviceCreated(device_id=d.id, name=d.name, enrollment_token=token,
                         enrollment_expires_at=d.enrollment_expires_at)


@router.post("/{device_id}/reprune", response_model=JobEnqueued, status_code=status.HTTP_202_ACCEPTED,
             responses={404: {}, 409: {"description": "device revoked"}})
async def reprune(device_id: str, principal: Operator, ctx: Ctx, body: RepruneRequest | None = None,
                  idempotency_key: Annotated[str | None, Header(max_length=150)] = None) -> JobEnqueued:
    """Queue a retrain of this device now. If it already has a queued or running job, that job is
    returned (`created: false`): a device never has two at once."""
    body = body or RepruneRequest()
    key = f"manual:{device_id}:{idempotency_key or uuid.uuid4().hex}"
    job, created = await ctx.db.run(jobs.enqueue_job, device_id=device_id, kind="retrain", idempotency_key=key,
                                    trigger_reason=f"manual ({principal.actor}): {body.reason}",
                                    params=body.params, actor=principal.actor)
    return JobEnqueued(job=JobPublic.model_validate(job), created=created)


@router.post("/{device_id}/rollback", response_model=DevicePublic, responses={404: {}, 409: {}})
async def rollback(device_id: str, principal: Operator, ctx: Ctx, body: RollbackRequest | None = None) -> DevicePublic:
    """Assign the device the version it had before its current one."""
    await ctx.db.run(devices.rollback_device, device_id, reason=(body or RollbackRequest()).reason,
                     actor=principal.actor)
    return await _public(ctx, device_id)


@router.post("/{device_id}/pin", response_model=DevicePublic, responses={404: {}, 409: {}})
async def pin(device_id: str, body: PinRequest, principal: Operator, ctx: Ctx) -> DevicePublic:
    """Assign a version and keep it: automatic deploys and rollouts skip a pinned device."""
    await ctx.db.run(devices.pin_version, device_id, body.version_id, reason=body.reason, actor=principal.actor)
    return await _public(ctx, device_id)


@router.delete("/{device_id}/pin", response_model=DevicePublic, responses={404: {}})
async def unpin(device_id: str, principal: Operator, ctx: Ctx) -> DevicePublic:
    await ctx.db.run(devices.unpin, device_id, actor=principal.actor)
    return await _public(ctx, device_id)
