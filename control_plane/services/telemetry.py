"""Reading telemetry back (device time series, the controller's inputs)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db.models import Telemetry


def recent(s: Session, device_id: str, *, limit: int = 100, after_seq: int | None = None) -> list[Telemetry]:
    """A device's newest `limit` records (after `after_seq` if given), oldest first."""
    q = select(Telemetry).where(Telemetry.device_id == device_id)
    if after_seq is not None:
        q = q.where(Telemetry.seq > after_seq)
    return list(s.scalars(q.order_by(Telemetry.seq.desc()).limit(limit)))[::-1]
