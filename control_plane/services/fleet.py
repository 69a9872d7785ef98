"""Fleet-wide figures for the summary endpoint, the dashboard and /metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, func, select
from sqlalchemy.orm import Session

from control_plane.db.models import Device, ModelVersion, SketchRecord, Telemetry
from control_plane.errors import ValidationFailedError
from control_plane.services import jobs as jobs_service
from control_plane.services.devices import StateRules, states_count

STATES = ("pending", "healthy", "drifting", "retraining", "rolling_back", "offline", "revoked")


def summary(s: Session, rules: StateRules) -> dict[str, Any]:
    by_state = dict.fromkeys(STATES, 0)
    by_state.update(states_count(s, rules))
    since = rules.now - dt.timedelta(hours=1)
    tel = s.execute(select(func.count(), func.sum(Telemetry.labelled_count), func.sum(Telemetry.labelled_correct),
                           func.avg(Telemetry.estimated_accuracy))
                    .where(Telemetry.received_at >= since)).one()
    n, labelled, correct, est = tel
    mean_ratio = s.scalar(select(func.avg(ModelVersion.compression_ratio))
                          .join(Device, Device.deployed_version == ModelVersion.id)
                          .where(Device.revoked_at.is_(None)))
    return {
        "devices": sum(by_state.values()),
        "by_state": by_state,
        "jobs_by_status": jobs_service.counts_by_status(s),
        "versions": int(s.scalar(select(func.count()).select_from(ModelVersion)) or 0),
        "mean_compression_deployed": None if mean_ratio is None else float(mean_ratio),
        "labelled_accuracy_1h": (float(correct) / float(labelled)) if labelled else None,
        "estimated_accuracy_1h": None if est is None else float(est),
        "telemetry_records_1h": int(n or 0),
    }


MAX_POINTS = 2000


def series(s: Session, *, since: dt.datetime, until: dt.datetime, bucket_s: float) -> list[dict[str, Any]]:
    """Fleet telemetry in time buckets (by server receive time): pooled labelled accuracy, mean
    estimate, and the mean compression ratio of the versions the records say they ran."""
    if bucket_s <= 0 or (until - since).total_seconds() / bucket_s > MAX_POINTS:
        raise ValidationFailedError(f"at most {MAX_POINTS} buckets: widen bucket_s or shorten the range")
    bucket: ColumnElement[float]
    if s.get_bind().dialect.name == "postgresql":
        bucket = func.floor(func.extract("epoch", Telemetry.received_at) / bucket_s)
    else:  # SQLite stores the UTC time as text
        bucket = cast(cast(func.strftime("%s", Telemetry.received_at), Integer) / bucket_s, Integer)
    b = bucket.label("bucket")
    rows = s.execute(
        select(b, func.count(), func.count(func.distinct(Telemetry.device_id)), func.sum(Telemetry.labelled_count),
               func.sum(Telemetry.labelled_correct), func.avg(Telemetry.estimated_accuracy),
               func.avg(ModelVersion.compression_ratio))
        .outerjoin(ModelVersion, ModelVersion.id == Telemetry.deployed_version)
        .where(Telemetry.received_at >= since, Telemetry.received_at < until)
        .group_by(b).order_by(b)).all()
    return [{"start": float(r[0]) * bucket_s, "records": int(r[1]), "devices": int(r[2]),
             "labelled_accuracy": float(r[4]) / float(r[3]) if r[3] else None,
             "estimated_accuracy": None if r[5] is None else float(r[5]),
             "mean_compression": None if r[6] is None else float(r[6])} for r in rows]


def gauges(s: Session, rules: StateRules) -> dict[str, Any]:
    """What /metrics exports as gauges (computed at scrape time, so every replica agrees)."""
    by_state = dict.fromkeys(STATES, 0)
    by_state.update(states_count(s, rules))
    return {"devices_by_state": by_state, "jobs_by_status": jobs_service.counts_by_status(s),
            "sketches_total": int(s.scalar(select(func.count()).select_from(SketchRecord)) or 0)}
