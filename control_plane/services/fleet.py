"""Fleet-wide figures for the summary endpoint, the dashboard and /metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.db.models import Device, ModelVersion, SketchRecord, Telemetry
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


def gauges(s: Session, rules: StateRules) -> dict[str, Any]:
    """What /metrics exports as gauges (computed at scrape time, so every replica agrees)."""
    by_state = dict.fromkeys(STATES, 0)
    by_state.update(states_count(s, rules))
    return {"devices_by_state": by_state, "jobs_by_status": jobs_service.counts_by_status(s),
            "sketches_total": int(s.scalar(select(func.count()).select_from(SketchRecord)) or 0)}
