"""Sketch uploads: stored as the raw wire bytes with their metadata, idempotent by (device, seq)."""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.db.models import Device, SketchRecord, utcnow
from control_plane.errors import NotFoundError, ValidationFailedError
from control_plane.schemas import StoredSketch
from qsae_shared.sketch import Sketch

logger = logging.getLogger(__name__)


def store_sketch(s: Session, device_id: str, data: bytes, sketch: Sketch) -> tuple[int, bool]:
    """Store one parsed upload; (seq, False) when that seq was already stored."""
    d = s.get(Device, device_id)
    if d is None:
        raise NotFoundError(f"device {device_id} does not exist")
    if sketch.base_model != d.base_model:
        raise ValidationFailedError(f"the sketch is of base model {sketch.base_model!r}; device {device_id} "
                                    f"is registered with {d.base_model!r}")
    existing = s.scalar(select(SketchRecord.sha256).where(SketchRecord.device_id == device_id,
                                                           SketchRecord.seq == sketch.seq))
    sha = hashlib.sha256(data).hexdigest()
    if existing is not None:
        if existing != sha:
            logger.warning("device %s re-sent sketch seq %d with different bytes; kept the first",
                           device_id, sketch.seq, extra={"device_id": device_id})
        return sketch.seq, False
    try:
        with s.begin_nested():
            s.add(SketchRecord(device_id=device_id, seq=sketch.seq, base_model=sketch.base_model,
                               deployed_version=sketch.deployed_version, window_start=sketch.window_start,
                               window_end=sketch.window_end, inference_count=sketch.inference_count,
                               num_samples=sketch.num_samples, size_bytes=len(data), sha256=sha,
                               data=bytes(data)))
    except IntegrityError:  # a concurrent upload of the same seq won
        return sketch.seq, False
    d.last_seen_at = utcnow()
    return sketch.seq, True


def device_sketches(s: Session, device_id: str, base_model: str, *, limit: int | None = None,
                    after_seq: int | None = None) -> list[StoredSketch]:
    """A device's uploads for one base model, oldest first; with `limit`, the newest `limit` ones."""
    q = select(SketchRecord).where(SketchRecord.device_id == device_id, SketchRecord.base_model == base_model)
    if after_seq is not None:
        q = q.where(SketchRecord.seq > after_seq)
    q = q.order_by(SketchRecord.seq.desc())
    if limit is not None:
        q = q.limit(limit)
    rows = list(s.scalars(q))[::-1]
    return [StoredSketch(seq=r.seq, base_model=r.base_model, window_start=r.window_start,
                         window_end=r.window_end, inference_count=r.inference_count,
                         num_samples=r.num_samples, sha256=r.sha256, data=r.data) for r in rows]
