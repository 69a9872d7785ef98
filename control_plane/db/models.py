"""The control plane's tables (SQLAlchemy 2 declarative). Times the server sets are timezone-aware
UTC datetimes; times a device measured (telemetry and sketch windows, event times) are unix seconds
as the device reported them. Request/response shapes live in `control_plane.schemas`, so a token
hash never reaches a response."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Constraint names are part of the migrations: keep them deterministic.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only
ACTIVE_JOB_STATES = ("queued", "running")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores aware datetimes as UTC and always hands back aware UTC datetimes (SQLite drops the
    zone; PostgreSQL keeps it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cohort: Mapped[str] = mapped_column(String(100), index=True, default="default")
    base_model: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    enrollment_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    enrollment_expires_at: Mapped[dt.datetime | None]
    enrolled_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    agent_version: Mapped[str | None] = mapped_column(String(100))
    last_seen_at: Mapped[dt.datetime | None]
    deployed_version: Mapped[str | None] = mapped_column(String(200))
    # No foreign key (it would make a cycle with model_versions.device_id); the service layer checks it.
    desired_version: Mapped[str | None] = mapped_column(String(200))
    desired_reason: Mapped[str] = mapped_column(String(500), default="")
    desired_changed_at: Mapped[dt.datetime | None]
    # What `desired_version` was before its last change: where "roll back" goes.
    previous_version: Mapped[str | None] = mapped_column(String(200))
    last_event_kind: Mapped[str | None] = mapped_column(String(20))
    last_event_at: Mapped[dt.datetime | None]
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    drift_score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # viewer | operator | admin
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class Revocation(Base):
    """Append-only log of revoked credential hashes: every replica polls it (by id) at least once
    per `token_cache_ttl_s` and evicts those hashes from its token cache."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class Telemetry(Base):
    __tablename__ = "telemetry"
    __table_args__ = (
        UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),
        Index("ix_telemetry_device_received", "device_id", "received_at"),  # a device's last hour
        # Fleet-wide time ranges; BRIN on PostgreSQL: append-only time column, near-free to maintain.
        Index("ix_telemetry_received_at", "received_at", postgresql_using="brin"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key: every insert would lock the device row (KEY SHARE, WAL-logged) at ~1,700
    # inserts/s. Only authenticated devices write here and devices are never deleted (revoked).
    device_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(BigInteger)
    uuid: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[dt.datetime]
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    inference_count: Mapped[int] = mapped_column(BigInteger)
    labelled_count: Mapped[int] = mapped_column(BigInteger)
    labelled_correct: Mapped[int] = mapped_column(BigInteger)
    estimated_accuracy: Mapped[float | None] = mapped_column(Float)
    mean_confidence: Mapped[float | None] = mapped_column(Float)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    deployed_version: Mapped[str | None] = mapped_column(String(200))
    outbox_dropped: Mapped[int] = mapped_column(BigInteger, default=0)


class SketchRecord(Base):
    __tablename__ = "sketches"
    __table_args__ = (
        UniqueConstraint("device_id", "seq", name="uq_sketches_device_seq"),
        Index("ix_sketches_device_base", "device_id", "base_model", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    base_model: Mapped[str] = mapped_column(String(200))
    deployed_version: Mapped[str | None] = mapped_column(String(200))
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    inference_count: Mapped[int] = mapped_column(BigInteger)
    num_samples: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # At most one queued-or-running job per device: the durable form of "never two at once".
        Index("uq_jobs_one_active_per_device", "device_id", unique=True,
              postgresql_where=text("status IN ('queued', 'running')"),
              sqlite_where=text("status IN ('queued', 'running')")),
        Index("ix_jobs_status_created", "status", "priority", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))  # retrain | train_base | ...
    status: Mapped[str] = mapped_column(String(20), default="queued")
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    trigger_reason: Mapped[str] = mapped_column(String(500), default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    version_id: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, default=100)  # lower runs first
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str] = mapped_column(String(500), default="")
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # the manifest's version_id
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), index=True)
    base_model: Mapped[str] = mapped_column(String(200))
    base_version: Mapped[str] = mapped_column(String(100))
    mlflow_name: Mapped[str | None] = mapped_column(String(200))
    mlflow_version: Mapped[str | None] = mapped_column(String(50))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(100))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(100))
    manifest: Mapped[str] = mapped_column(Text)  # the signed manifest JSON, served as is
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    file_sha256s: Mapped[list[Any]] = mapped_column(default=list)
    download_bytes: Mapped[int] = mapped_column(BigInteger)
    compression_ratio: Mapped[float | None] = mapped_column(Float)
    kl: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="candidate")
    job_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Policy(Base):
    """Re-prune and deploy policy; `default` applies to every cohort without its own row."""

    __tablename__ = "policies"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # "default" or a cohort
    kl_budget: Mapped[float] = mapped_column(Float)
    min_compression: Mapped[float] = mapped_column(Float)
    accuracy_drop_pp: Mapped[float] = mapped_column(Float)
    drift_threshold: Mapped[float] = mapped_column(Float)
    interval_s: Mapped[float] = mapped_column(Float)
    auto_deploy: Mapped[bool] = mapped_column(Boolean, default=True)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    cohort: Mapped[str] = mapped_column(String(100))
    stages: Mapped[list[Any]] = mapped_column(default=list)  # increasing fractions of the cohort
    stage: Mapped[int] = mapped_column(Integer, default=0)  # index into stages
    thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), default="active")  # active|paused|completed|aborted
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RolloutDevice(Base):
    """A device a rollout moved, with what it ran before (for abort)."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(BigId, ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    previous_version: Mapped[str | None] = mapped_column(String(200))
    stage: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeviceEvent(Base):
    __tablename__ = "device_events"
    __table_args__ = (UniqueConstraint("device_id", "uuid", name="uq_device_events_device_uuid"),
                      Index("ix_device_events_device_id_id", "device_id", "id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    uuid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))
    version_id: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[float] = mapped_column(Float)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # "apikey:<id>", "device:<id>", "system:<who>"
    action: Mapped[str] = mapped_column(String(100))
    subject_type: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
