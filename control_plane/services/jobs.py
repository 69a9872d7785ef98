"""The jobs table is the durable queue. At most one queued-or-running job per device (a partial
unique index enforces it); claims use FOR UPDATE SKIP LOCKED on PostgreSQL and a conditional
update everywhere, so two dispatchers never run the same job. Every job has a unique idempotency
key: enqueueing the same key again returns the existing job."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.constants import NOTE_JOB
from control_plane.db.models import ACTIVE_JOB_STATES, Device, Job, utcnow
from control_plane.errors import ConflictError, NotFoundError, ValidationFailedError
from control_plane.services import audit
from control_plane.services.uow import note

logger = logging.getLogger(__name__)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def get_job(s: Session, job_id: int) -> Job:
    j = s.get(Job, job_id)
    if j is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return j


def _active_job(s: Session, device_id: str) -> Job | None:
    return s.scalar(select(Job).where(Job.device_id == device_id, Job.status.in_(ACTIVE_JOB_STATES)))


def enqueue_job(s: Session, *, device_id: str | None, kind: str, idempotency_key: str,
                trigger_reason: str, params: dict[str, Any] | None = None, priority: int = 100,
                max_attempts: int = 3, actor: str = "system:controller") -> tuple[Job, bool]:
    """Queue a job; (job, created). Returns the existing job, created=False, when the key was
    used before or the device already has a queued or running job."""
    if not idempotency_key or len(idempotency_key) > 200:
        raise ValidationFailedError("idempotency_key must be 1..200 characters")
    existing = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
    if existing is not None:
        return existing, False
    if device_id is not None:
        d = s.get(Device, device_id)
        if d is None:
            raise NotFoundError(f"device {device_id} does not exist")
        if d.revoked_at is not None:
            raise ConflictError(f"device {device_id} is revoked; no jobs for it")
        active = _active_job(s, device_id)
        if active is not None:
            return active, False
    job = Job(device_id=device_id, kind=kind, idempotency_key=idempotency_key,
              trigger_reason=trigger_reason[:500], params=dict(params or {}), priority=priority,
              max_attempts=max_attempts, status="queued", attempts=0, progress=0.0, progress_message="")
    try:
        with s.begin_nested():
            s.add(job)
    except IntegrityError:  # raced with another enqueue of the same key or device
        again = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if again is None and device_id is not None:
            again = _active_job(s, device_id)
        if again is None:
            raise
        return again, False
    audit.record(s, actor, "job.enqueue", "job", str(job.id), device_id=device_id, kind=kind,
                 trigger=trigger_reason)
    note(s, NOTE_JOB, job.id)
    logger.info("enqueued %s job %d for device %s: %s", kind, job.id, device_id, trigger_reason,
                extra={"device_id": device_id, "job_id": job.id})
    return job, True


def _requeue_expired(s: Session, lease_s: float) -> None:
    cutoff = utcnow() - dt.timedelta(seconds=lease_s)
    stale = list(s.scalars(select(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)
                           .with_for_update(skip_locked=True)))
    for j in stale:
        msg = f"lease expired: no progress from worker {j.worker} for {lease_s:.0f} s"
        if j.attempts >= j.max_attempts:
            j.status, j.finished_at, j.error = "failed", utcnow(), msg
        else:
            j.status, j.error, j.worker = "queued", msg, None
        logger.warning("job %d: %s", j.id, msg, extra={"job_id": j.id, "device_id": j.device_id})


def claim_next_job(s: Session, *, worker: str, kinds: Sequence[str] | None = None,
                   lease_s: float = 3600.0) -> Job | None:
    """Take the oldest queued job (lowest priority value first) and mark it running for `worker`;
    None when there is nothing to do. Jobs whose worker stopped reporting for `lease_s` go back
    to the queue first (or fail after max_attempts)."""
    _requeue_expired(s, lease_s)
    q = select(Job.id).where(Job.status == "queued")
    if kinds:
        q = q.where(Job.kind.in_(list(kinds)))
    q = q.order_by(Job.priority, Job.id).limit(8).with_for_update(skip_locked=True)
    now = utcnow()
    for job_id in s.scalars(q).all():
        res = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                        .values(status="running", attempts=Job.attempts + 1, worker=worker,
                                started_at=now, heartbeat_at=now, progress=0.0, progress_message="claimed",
                                error=None)
                        .execution_options(synchronize_session=False))
        if res.rowcount == 1:  # type: ignore[attr-defined]
            job = s.get(Job, job_id, populate_existing=True)
            logger.info("worker %s claimed job %d", worker, job_id,
                        extra={"job_id": job_id, "device_id": job.device_id if job else None})
            return job
    return None


def _running(s: Session, job_id: int) -> Job:
    j = get_job(s, job_id)
    if j.status != "running":
        raise ConflictError(f"job {job_id} is {j.status}, not running; stop working on it")
    return j


def update_progress(s: Session, job_id: int, progress: float, message: str = "") -> Job:
    """Report progress (0..1) of a running job; also renews its lease."""
    j = _running(s, job_id)
    j.progress = float(min(max(progress, 0.0), 1.0))
    j.progress_message = message[:500]
    j.heartbeat_at = utcnow()
    return j


def complete_job(s: Session, job_id: int, *, version_id: str | None = None,
                 result: dict[str, Any] | None = None) -> Job:
    j = get_job(s, job_id)
    if j.status == "succeeded":
        return j  # completing twice is harmless (the dispatcher may retry after a lost reply)
    j = _running(s, job_id)
    j.status, j.progress, j.finished_at = "succeeded", 1.0, utcnow()
    j.version_id, j.result = version_id, dict(result or {})
    audit.record(s, f"worker:{j.worker}", "job.complete", "job", str(j.id), version_id=version_id)
    logger.info("job %d succeeded: version %s", j.id, version_id,
                extra={"job_id": j.id, "device_id": j.device_id, "model_version": version_id})
    return j


def fail_job(s: Session, job_id: int, error: str, *, retry: bool = True) -> Job:
    """Record a failure; the job goes back to the queue while it has attempts left and `retry`."""
    j = _running(s, job_id)
    j.error = error[:10_000]
    if retry and j.attempts < j.max_attempts:
        j.status, j.worker, j.progress, j.progress_message = "queued", None, 0.0, "retrying"
        note(s, NOTE_JOB, j.id)
    else:
        j.status, j.finished_at = "failed", utcnow()
    audit.record(s, f"worker:{j.worker}", "job.fail", "job", str(j.id), error=error[:500], status=j.status)
    logger.warning("job %d failed (attempt %d/%d, now %s): %s", j.id, j.attempts, j.max_attempts,
                   j.status, error[:200], extra={"job_id": j.id, "device_id": j.device_id})
    return j


def cancel_job(s: Session, job_id: int, *, actor: str) -> Job:
    j = get_job(s, job_id)
    if j.status not in ACTIVE_JOB_STATES:
        raise ConflictError(f"job {job_id} is already {j.status}")
    j.status, j.finished_at = "cancelled", utcnow()
    audit.record(s, actor, "job.cancel", "job", str(j.id))
    return j


def list_jobs(s: Session, *, status: str | None = None, device_id: str | None = None, kind: str | None = None,
              limit: int = 100, offset: int = 0) -> tuple[list[Job], int]:
    q = select(Job)
    if status:
        if status not in JOB_STATES:
            raise ValidationFailedError(f"status must be one of {', '.join(JOB_STATES)}")
        q = q.where(Job.status == status)
    if device_id:
        q = q.where(Job.device_id == device_id)
    if kind:
        q = q.where(Job.kind == kind)
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    return list(s.scalars(q.order_by(Job.id.desc()).limit(limit).offset(offset))), int(total)


def counts_by_status(s: Session) -> dict[str, int]:
    rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    out = dict.fromkeys(JOB_STATES, 0)
    out.update({r[0]: int(r[1]) for r in rows})
    return out
