"""Staged rollouts of one (fleet-wide) version to a cohort: each stage moves a larger share of
the cohort's devices (chosen by a stable hash, so a stage only adds devices); abort sends every
moved device back to what it had before. The controller decides when to advance or abort from
the thresholds; operators can do it by hand."""

from __future__ import annotations

import hashlib
import logging
import math

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.db.models import Device, Rollout, RolloutDevice, utcnow
from control_plane.errors import ConflictError, NotFoundError
from control_plane.services import audit
from control_plane.services.devices import get_device, set_desired_version
from control_plane.services.versions import get_version

logger = logging.getLogger(__name__)


def get_rollout(s: Session, rollout_id: int) -> Rollout:
    r = s.get(Rollout, rollout_id)
    if r is None:
        raise NotFoundError(f"rollout {rollout_id} does not exist")
    return r


def _eligible(s: Session, r: Rollout, base_model: str) -> list[str]:
    ids = s.scalars(select(Device.id).where(Device.cohort == r.cohort, Device.base_model == base_model,
                                            Device.revoked_at.is_(None), Device.pinned.is_(False)))
    return sorted(ids, key=lambda d: hashlib.sha256(f"{r.id}:{d}".encode()).hexdigest())


def _apply_stage(s: Session, r: Rollout, actor: str) -> int:
    v = get_version(s, r.version_id)
    devices = _eligible(s, r, v.base_model)
    share = r.stages[r.stage]
    target = devices[:math.ceil(share * len(devices))]
    done = set(s.scalars(select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == r.id)))
    moved = 0
    for device_id in target:
        if device_id in done:
            continue
        d = get_device(s, device_id)
        s.add(RolloutDevice(rollout_id=r.id, device_id=device_id, previous_version=d.desired_version,
                            stage=r.stage))
        set_desired_version(s, device_id, r.version_id, actor=actor,
                            reason=f"rollout {r.id} stage {r.stage + 1}/{len(r.stages)} ({share:.0%})")
        moved += 1
    return moved


def device_count(s: Session, rollout_id: int) -> int:
    return int(s.scalar(select(func.count()).select_from(RolloutDevice)
                        .where(RolloutDevice.rollout_id == rollout_id)) or 0)


def create_rollout(s: Session, *, version_id: str, cohort: str, stages: list[float],
                   thresholds: dict[str, float], reason: str, actor: str) -> Rollout:
    v = get_version(s, version_id)
    if v.device_id is not None:
        raise ConflictError(f"version {version_id} was pruned for device {v.device_id}; "
                            "roll out fleet-wide versions only (pin device versions instead)")
    if v.status in ("rejected", "retired"):
        raise ConflictError(f"version {version_id} is {v.status}")
    busy = s.scalar(select(Rollout.id).where(Rollout.cohort == cohort, Rollout.state.in_(("active", "paused"))))
    if busy is not None:
        raise ConflictError(f"cohort {cohort!r} already has rollout {busy} in progress; finish or abort it")
    r = Rollout(version_id=version_id, cohort=cohort, stages=list(stages), stage=0,
                thresholds=dict(thresholds), state="active", reason=reason)
    s.add(r)
    s.flush()
    moved = _apply_stage(s, r, actor)
    if len(r.stages) == 1:
        r.state = "completed"
    audit.record(s, actor, "rollout.create", "rollout", str(r.id), version_id=version_id, cohort=cohort,
                 moved=moved)
    logger.info("rollout %d of %s to cohort %s: stage 1 moved %d devices", r.id, version_id, cohort, moved,
                extra={"model_version": version_id})
    return r


def advance_rollout(s: Session, rollout_id: int, *, actor: str, reason: str = "") -> Rollout:
    r = get_rollout(s, rollout_id)
    if r.state != "active":
        raise ConflictError(f"rollout {rollout_id} is {r.state}; only an active rollout advances"
                            + (" (resume it first)" if r.state == "paused" else ""))
    if r.stage + 1 >= len(r.stages):
        r.state = "completed"
        audit.record(s, actor, "rollout.complete", "rollout", str(r.id), reason=reason)
        return r
    r.stage += 1
    r.updated_at = utcnow()
    moved = _apply_stage(s, r, actor)
    if r.stage + 1 == len(r.stages):
        r.state = "completed"
    audit.record(s, actor, "rollout.advance", "rollout", str(r.id), stage=r.stage, moved=moved, reason=reason)
    return r


def pause_rollout(s: Session, rollout_id: int, *, actor: str, reason: str = "") -> Rollout:
    r = get_rollout(s, rollout_id)
    if r.state != "active":
        raise ConflictError(f"rollout {rollout_id} is {r.state}; only an active rollout pauses")
    r.state = "paused"
    audit.record(s, actor, "rollout.pause", "rollout", str(r.id), reason=reason)
    return r


def resume_rollout(s: Session, rollout_id: int, *, actor: str, reason: str = "") -> Rollout:
    r = get_rollout(s, rollout_id)
    if r.state != "paused":
        raise ConflictError(f"rollout {rollout_id} is {r.state}; only a paused rollout resumes")
    r.state = "active"
    audit.record(s, actor, "rollout.resume", "rollout", str(r.id), reason=reason)
    return r


def abort_rollout(s: Session, rollout_id: int, *, actor: str, reason: str = "") -> Rollout:
    """Stop the rollout (or undo a completed one) and send every device it moved, and that is
    still assigned its version, back to what it had before."""
    r = get_rollout(s, rollout_id)
    if r.state == "aborted":
        raise ConflictError(f"rollout {rollout_id} is already aborted")
    r.state, r.reason = "aborted", (reason or r.reason)[:500]
    restored = 0
    for rd in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)):
        d = s.get(Device, rd.device_id)
        if d is not None and d.desired_version == r.version_id and not d.pinned:
            set_desired_version(s, d.id, rd.previous_version, actor=actor,
                                reason=f"rollout {r.id} aborted: {reason}".strip())
            restored += 1
    audit.record(s, actor, "rollout.abort", "rollout", str(r.id), reason=reason, restored=restored)
    logger.warning("rollout %d aborted (%s): %d devices restored", r.id, reason, restored,
                   extra={"model_version": r.version_id})
    return r


def list_rollouts(s: Session, *, state: str | None = None, cohort: str | None = None,
                  limit: int = 100) -> list[Rollout]:
    q = select(Rollout)
    if state:
        q = q.where(Rollout.state == state)
    if cohort:
        q = q.where(Rollout.cohort == cohort)
    return list(s.scalars(q.order_by(Rollout.id.desc()).limit(limit)))


def rollout_devices(s: Session, rollout_id: int) -> list[RolloutDevice]:
    return list(s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)))
