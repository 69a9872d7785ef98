"""Devices: creation and enrollment, revocation, listing with state, desired versions."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select
from sqlalchemy.orm import Session

from control_plane import security
from control_plane.constants import NOTE_ASSIGNMENT
from control_plane.db.models import (
    ACTIVE_JOB_STATES,
    Device,
    DeviceEvent,
    Job,
    ModelVersion,
    SketchRecord,
    Telemetry,
    utcnow,
)
from control_plane.errors import AuthenticationError, ConflictError, NotFoundError, ValidationFailedError
from control_plane.services import audit
from control_plane.services.auth import add_revocation
from control_plane.services.uow import note

logger = logging.getLogger(__name__)
ROLLING_BACK_FOR = dt.timedelta(minutes=10)  # a rollback event marks a device for this long
SORTABLE = ("name", "created_at", "last_seen_at", "drift_score", "cohort", "state", "compression_ratio")


@dataclass(frozen=True)
class StateRules:
    """What the state column is computed from."""

    now: dt.datetime
    offline_after_s: float
    drift_threshold: float | None = None  # None: the default policy's


def _resolved(s: Session, rules: StateRules) -> StateRules:
    if rules.drift_threshold is not None:
        return rules
    from control_plane.services.policies import get_policy

    return StateRules(rules.now, rules.offline_after_s, get_policy(s).drift_threshold)


def get_device(s: Session, device_id: str) -> Device:
    d = s.get(Device, device_id)
    if d is None:
        raise NotFoundError(f"device {device_id} does not exist")
    return d


def create_device(s: Session, *, name: str, labels: dict[str, str], base_model: str, actor: str,
                  enrollment_ttl_s: float) -> tuple[Device, str]:
    """A new device and its one-time enrollment token (returned once, stored hashed)."""
    if s.scalar(select(Device.id).where(Device.name == name)) is not None:
        raise ConflictError(f"a device named {name!r} already exists; pick another name")
    token = security.new_secret(security.ENROLLMENT_TOKEN_PREFIX)
    d = Device(id=security.new_id("d-"), name=name, labels=dict(labels),
               cohort=labels.get("cohort", "default"), base_model=base_model,
               enrollment_token_hash=security.hash_secret(token),
               enrollment_expires_at=utcnow() + dt.timedelta(seconds=enrollment_ttl_s))
    s.add(d)
    s.flush()
    audit.record(s, actor, "device.create", "device", d.id, name=name, base_model=base_model)
    logger.info("created device %s (%s)", d.id, name, extra={"device_id": d.id})
    return d, token


def reissue_enrollment(s: Session, device_id: str, *, actor: str, enrollment_ttl_s: float) -> tuple[Device, str]:
    """A fresh enrollment token for a device that lost its credentials; its old token stops working."""
    d = get_device(s, device_id)
    if d.revoked_at is not None:
        raise ConflictError(f"device {device_id} is revoked; create a new device instead")
    add_revocation(s, d.token_hash)
    token = security.new_secret(security.ENROLLMENT_TOKEN_PREFIX)
    d.token_hash = None
    d.enrolled_at = None
    d.enrollment_token_hash = security.hash_secret(token)
    d.enrollment_expires_at = utcnow() + dt.timedelta(seconds=enrollment_ttl_s)
    audit.record(s, actor, "device.reissue_enrollment", "device", d.id)
    return d, token


def enroll(s: Session, *, enrollment_token: str, agent_version: str) -> tuple[Device, str]:
    """Exchange a one-time enrollment token for the device's bearer token."""
    h = security.hash_secret(enrollment_token)
    d = s.scalar(select(Device).where(Device.enrollment_token_hash == h).with_for_update())
    bad = ("enrollment token is unknown, already used or expired; ask an operator for a new one "
           "(POST /api/v1/devices)")
    if d is None or d.revoked_at is not None:
        raise AuthenticationError(bad)
    if d.enrollment_expires_at is not None and d.enrollment_expires_at <= utcnow():
        raise AuthenticationError(bad)
    token = security.new_secret(security.DEVICE_TOKEN_PREFIX)
    d.token_hash = security.hash_secret(token)
    d.enrollment_token_hash = None
    d.enrollment_expires_at = None
    d.enrolled_at = utcnow()
    d.agent_version = agent_version or None
    audit.record(s, f"device:{d.id}", "device.enroll", "device", d.id, agent_version=agent_version)
    logger.info("device %s enrolled (agent %s)", d.id, agent_version, extra={"device_id": d.id})
    return d, token


def revoke_device(s: Session, device_id: str, *, actor: str) -> Device:
    """Revoke a device: its token stops working on every replica within token_cache_ttl_s."""
    d = get_device(s, device_id)
    if d.revoked_at is None:
        d.revoked_at = utcnow()
        add_revocation(s, d.token_hash)
        d.enrollment_token_hash = None
        audit.record(s, actor, "device.revoke", "device", d.id)
        logger.info("revoked device %s", d.id, extra={"device_id": d.id})
    return d


def state_expr(rules: StateRules) -> ColumnElement[str]:
    active_job = exists().where(and_(Job.device_id == Device.id, Job.status.in_(ACTIVE_JOB_STATES)))
    cutoff = rules.now - dt.timedelta(seconds=rules.offline_after_s)
    return case(
        (Device.revoked_at.is_not(None), "revoked"),
        (Device.enrolled_at.is_(None), "pending"),
        (or_(Device.last_seen_at.is_(None), Device.last_seen_at < cutoff), "offline"),
        (active_job, "retraining"),
        (and_(Device.last_event_kind == "rolled_back",
              Device.last_event_at >= rules.now - ROLLING_BACK_FOR), "rolling_back"),
        (Device.drift_score >= rules.drift_threshold, "drifting"),
        else_="healthy",
    ).label("state")


def _decorate(row: Any) -> Device:
    d, state, ratio = row
    d.state = state
    d.compression_ratio = ratio
    return d


def _with_accuracy(s: Session, devices: list[Device], now: dt.datetime) -> list[Device]:
    """Attach each device's last-hour labelled (pooled) and estimated (mean) accuracy."""
    if not devices:
        return devices
    since = now - dt.timedelta(hours=1)
    rows = s.execute(select(Telemetry.device_id, func.sum(Telemetry.labelled_count),
                            func.sum(Telemetry.labelled_correct), func.avg(Telemetry.estimated_accuracy))
                     .where(Telemetry.device_id.in_([d.id for d in devices]), Telemetry.received_at >= since)
                     .group_by(Telemetry.device_id)).all()
    by_id = {r[0]: r for r in rows}
    for d in devices:
        r = by_id.get(d.id)
        labelled, correct, est = (r[1], r[2], r[3]) if r else (0, 0, None)
        d.labelled_accuracy_1h = float(correct) / float(labelled) if labelled else None  # type: ignore[attr-defined]
        d.estimated_accuracy_1h = None if est is None else float(est)  # type: ignore[attr-defined]
    return devices


def list_devices(s: Session, rules: StateRules, *, cohort: str | None = None, state: str | None = None,
                 base_model: str | None = None, q: str | None = None, sort: str = "name",
                 descending: bool = False, limit: int = 100, offset: int = 0) -> tuple[list[Device], int]:
    """Devices with their computed `state` and deployed `compression_ratio`, filtered and sorted."""
    if sort not in SORTABLE:
        raise ValidationFailedError(f"cannot sort by {sort!r}; use one of {', '.join(SORTABLE)}")
    st = state_expr(_resolved(s, rules))
    base = (select(Device, st, ModelVersion.compression_ratio.label("compression_ratio"))
            .outerjoin(ModelVersion, ModelVersion.id == Device.deployed_version))
    if cohort:
        base = base.where(Device.cohort == cohort)
    if base_model:
        base = base.where(Device.base_model == base_model)
    if q:
        base = base.where(or_(Device.name.contains(q, autoescape=True), Device.id.startswith(q, autoescape=True)))
    if state:
        base = base.where(st == state)
    total = s.scalar(select(func.count()).select_from(base.subquery())) or 0
    computed = {"state": st, "compression_ratio": ModelVersion.compression_ratio}
    key = computed[sort] if sort in computed else getattr(Device, sort)  # (a .get default is evaluated: 500)
    order = [key.desc().nulls_last() if descending else key.asc().nulls_last(), Device.id]
    rows = s.execute(base.order_by(*order).limit(limit).offset(offset)).all()
    return _with_accuracy(s, [_decorate(r) for r in rows], rules.now), int(total)


def device_with_state(s: Session, device_id: str, rules: StateRules) -> Device:
    row = s.execute(select(Device, state_expr(_resolved(s, rules)), ModelVersion.compression_ratio)
                    .outerjoin(ModelVersion, ModelVersion.id == Device.deployed_version)
                    .where(Device.id == device_id)).first()
    if row is None:
        raise NotFoundError(f"device {device_id} does not exist")
    return _with_accuracy(s, [_decorate(row)], rules.now)[0]


def states_count(s: Session, rules: StateRules) -> dict[str, int]:
    sub = select(state_expr(_resolved(s, rules))).subquery()
    rows = s.execute(select(sub.c.state, func.count()).group_by(sub.c.state)).all()
    return {r[0]: int(r[1]) for r in rows}


def device_detail(s: Session, device_id: str, rules: StateRules, *, telemetry_limit: int = 500) -> dict[str, Any]:
    d = device_with_state(s, device_id, rules)
    tel = list(s.scalars(select(Telemetry).where(Telemetry.device_id == device_id)
                         .order_by(Telemetry.seq.desc()).limit(telemetry_limit)))[::-1]
    sk = list(s.scalars(select(SketchRecord).where(SketchRecord.device_id == device_id)
                        .order_by(SketchRecord.id.desc()).limit(20)))
    ev = list(s.scalars(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                        .order_by(DeviceEvent.id.desc()).limit(100)))
    jobs = list(s.scalars(select(Job).where(Job.device_id == device_id).order_by(Job.id.desc()).limit(50)))
    versions = list(s.scalars(select(ModelVersion).where(ModelVersion.device_id == device_id)
                              .order_by(ModelVersion.created_at.desc()).limit(50)))
    return {"device": d, "telemetry": tel, "sketches": sk, "events": ev, "jobs": jobs, "versions": versions}


def _check_version_fits(s: Session, d: Device, version_id: str) -> ModelVersion:
    v = s.get(ModelVersion, version_id)
    if v is None:
        raise NotFoundError(f"model version {version_id} does not exist")
    if v.device_id is not None and v.device_id != d.id:
        raise ConflictError(f"version {version_id} was pruned for device {v.device_id}, not {d.id}")
    if v.base_model != d.base_model:
        raise ConflictError(f"version {version_id} is of base model {v.base_model}; device {d.id} runs "
                            f"{d.base_model}")
    if v.status in ("rejected", "retired"):
        raise ConflictError(f"version {version_id} is {v.status}; it cannot be deployed")
    return v


def set_desired_version(s: Session, device_id: str, version_id: str | None, *, reason: str, actor: str,
                        pin: bool | None = None, force: bool = False) -> Device:
    """Point a device at a version (None: no assignment). A pinned device only moves when `force`
    (operator actions) is set. Long-polling agents are woken after the commit."""
    d = get_device(s, device_id)
    if d.pinned and not force:
        raise ConflictError(f"device {device_id} is pinned to {d.desired_version}; unpin it first")
    if version_id is not None:
        _check_version_fits(s, d, version_id)
    if d.desired_version != version_id:
        d.previous_version = d.desired_version
        d.desired_version = version_id
        d.desired_changed_at = utcnow()
        note(s, NOTE_ASSIGNMENT, d.id)
    d.desired_reason = reason[:500]
    if pin is not None:
        d.pinned = pin
    audit.record(s, actor, "device.set_desired", "device", d.id, version_id=version_id, reason=reason,
                 pinned=d.pinned)
    logger.info("device %s desired version -> %s (%s)", d.id, version_id, reason,
                extra={"device_id": d.id, "model_version": version_id})
    return d


def pin_version(s: Session, device_id: str, version_id: str, *, reason: str, actor: str) -> Device:
    return set_desired_version(s, device_id, version_id, reason=reason or f"pinned by {actor}",
                               actor=actor, pin=True, force=True)


def unpin(s: Session, device_id: str, *, actor: str) -> Device:
    d = get_device(s, device_id)
    d.pinned = False
    audit.record(s, actor, "device.unpin", "device", d.id)
    return d


def rollback_device(s: Session, device_id: str, *, reason: str, actor: str) -> Device:
    """Send the device back to the version it was assigned before the current one."""
    d = get_device(s, device_id)
    if d.previous_version is None:
        raise ConflictError(f"device {device_id} has no earlier version to roll back to")
    target = d.previous_version
    return set_desired_version(s, device_id, target, reason=reason or f"rolled back by {actor}",
                               actor=actor, force=True)


def record_drift(s: Session, device_id: str, score: float) -> None:
    """The controller's latest drift score of a device (0..1)."""
    get_device(s, device_id).drift_score = float(score)


def assignment(s: Session, device_id: str) -> tuple[str | None, str | None, str | None, str]:
    """(desired version, its manifest JSON, the manifest's sha256, reason) of one device."""
    row = s.execute(select(Device.desired_version, Device.desired_reason, ModelVersion.manifest,
                           ModelVersion.manifest_sha256)
                    .outerjoin(ModelVersion, ModelVersion.id == Device.desired_version)
                    .where(Device.id == device_id)).first()
    if row is None:
        raise NotFoundError(f"device {device_id} does not exist")
    return row.desired_version, row.manifest, row.manifest_sha256, row.desired_reason or ""
