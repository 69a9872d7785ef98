"""Audit trail: who did what to which subject."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db.models import AuditEvent


def record(s: Session, actor: str, action: str, subject_type: str, subject_id: str,
           **details: Any) -> None:
    s.add(AuditEvent(actor=actor, action=action, subject_type=subject_type, subject_id=str(subject_id),
                     details=details))


def list_events(s: Session, *, subject_type: str | None = None, subject_id: str | None = None,
                limit: int = 100, offset: int = 0) -> list[AuditEvent]:
    q = select(AuditEvent).order_by(AuditEvent.id.desc())
    if subject_type:
        q = q.where(AuditEvent.subject_type == subject_type)
    if subject_id:
        q = q.where(AuditEvent.subject_id == subject_id)
    return list(s.scalars(q.limit(limit).offset(offset)))
