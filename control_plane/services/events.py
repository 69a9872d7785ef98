"""Device events (downloaded, verified, applied, rejected, rolled back, failed), idempotent by uuid."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db.models import Device, DeviceEvent, utcnow
from control_plane.schemas import DeviceEventIn

logger = logging.getLogger(__name__)


def record_events(s: Session, device_id: str, events: Sequence[DeviceEventIn]) -> list[str]:
    """Store new events, skip ones already stored; returns every uuid (all are stored now)."""
    uuids = [e.uuid for e in events]
    known = set(s.scalars(select(DeviceEvent.uuid).where(DeviceEvent.device_id == device_id,
                                                          DeviceEvent.uuid.in_(uuids))))
    d = s.get(Device, device_id)
    now = utcnow()
    fresh: dict[str, DeviceEventIn] = {}
    for e in events:
        if e.uuid not in known and e.uuid not in fresh:
            fresh[e.uuid] = e
    for e in sorted(fresh.values(), key=lambda e: e.at):
        s.add(DeviceEvent(device_id=device_id, uuid=e.uuid, kind=e.kind, version_id=e.version_id,
                          reason=e.reason, at=e.at, received_at=now))
        logger.info("device %s event %s %s: %s", device_id, e.kind, e.version_id, e.reason,
                    extra={"device_id": device_id, "model_version": e.version_id})
        if d is not None:
            d.last_event_kind, d.last_event_at = e.kind, now
            if e.kind == "applied" and e.version_id:
                d.deployed_version = e.version_id
    if d is not None:
        d.last_seen_at = now
    return uuids


def list_events(s: Session, device_id: str, limit: int = 100) -> list[DeviceEvent]:
    return list(s.scalars(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                          .order_by(DeviceEvent.id.desc()).limit(limit)))
