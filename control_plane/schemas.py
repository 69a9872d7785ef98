"""Request and response shapes of the API (and of the Python data-access API the workers use).
Kept apart from the DB models so no hash or secret column can leak into a response."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["viewer", "operator", "admin"]
DeviceState = Literal["pending", "healthy", "drifting", "retraining", "rolling_back", "offline", "revoked"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
VersionStatus = Literal["candidate", "approved", "rejected", "retired"]
EventKind = Literal["downloaded", "verified", "applied", "rejected", "rolled_back", "failed"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$"
MAX_INT = 2**62


class Strict(BaseModel):
    """Request bodies: unknown fields are an error (a typo should not be silently ignored),
    NaN/Inf are rejected."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null", allow_inf_nan=False)


class DeviceSent(BaseModel):
    """What agents send: unknown fields are ignored, so a newer agent's records still land on an
    older server (an agent drops a record the server refuses, so refusing costs data)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- enrollment ---------------------------------------------------------------------------
class EnrollRequest(Strict):
    enrollment_token: str = Field(min_length=8, max_length=200, examples=["qe_4KQ..."])
    agent_version: str = Field(default="", max_length=100, examples=["0.1.0"])


class EnrollResponse(BaseModel):
    device_id: str = Field(examples=["d-3f9c2a1b7e4d5c60"])
    device_token: str = Field(description="bearer token of this device; shown once",
                              examples=["qd_Zm9v..."])
    signing_keys: dict[str, str] = Field(description="key id -> base64 Ed25519 public key to pin",
                                         examples=[{"8c1f0e2d4b6a7988": "MCowBQYDK2VwAyEA..."}])
    base_model: str = Field(examples=["fmnist-cnn"])
    poll_interval_s: float = Field(examples=[30.0])


# --- telemetry ----------------------------------------------------------------------------
class TelemetryRecord(DeviceSent):
    uuid: str = Field(min_length=1, max_length=64, examples=["0b6a1f0e-3d1c-4c4e-9f53-5a0c2b8e7d11"])
    seq: int = Field(ge=0, le=MAX_INT, examples=[41])
    window_start: float = Field(examples=[1764380000.0])
    window_end: float = Field(examples=[1764380060.0])
    inference_count: int = Field(ge=0, le=MAX_INT, examples=[1200])
    labelled_count: int = Field(default=0, ge=0, le=MAX_INT, examples=[40])
    labelled_correct: int = Field(default=0, ge=0, le=MAX_INT, examples=[37])
    estimated_accuracy: float | None = Field(default=None, ge=0, le=1, examples=[0.91])
    mean_confidence: float | None = Field(default=None, ge=0, le=1, examples=[0.87])
    latency_p50_ms: float | None = Field(default=None, ge=0, examples=[0.21])
    latency_p95_ms: float | None = Field(default=None, ge=0, examples=[0.35])
    deployed_version: str | None = Field(default=None, max_length=200, examples=["fmnist-cnn-d-3f9c-0007"])
    outbox_dropped: int = Field(default=0, ge=0, le=MAX_INT, examples=[0])

    @field_validator("labelled_correct")
    @classmethod
    def _correct_le_count(cls, v: int, info: Any) -> int:
        if v > info.data.get("labelled_count", v):
            raise ValueError("labelled_correct cannot exceed labelled_count")
        return v

    @field_validator("window_end")
    @classmethod
    def _window_order(cls, v: float, info: Any) -> float:
        if "window_start" in info.data and v < info.data["window_start"]:
            raise ValueError("window_end is before window_start")
        return v


class TelemetryBatch(DeviceSent):
    records: list[TelemetryRecord] = Field(min_length=1, description="at most FLEET_MAX_TELEMETRY_RECORDS")


class TelemetryAck(BaseModel):
    acked: list[int] = Field(description="seqs now stored (new or already stored)", examples=[[41, 42]])


class TelemetryPublic(Public):
    seq: int
    uuid: str
    received_at: dt.datetime
    window_start: float
    window_end: float
    inference_count: int
    labelled_count: int
    labelled_correct: int
    estimated_accuracy: float | None
    mean_confidence: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    deployed_version: str | None
    outbox_dropped: int

    @property
    def labelled_accuracy(self) -> float | None:
        return self.labelled_correct / self.labelled_count if self.labelled_count else None


# --- sketches -----------------------------------------------------------------------------
class SketchAck(BaseModel):
    seq: int = Field(examples=[7])
    stored: bool = Field(description="false when this seq was already stored", examples=[True])


class SketchPublic(Public):
    seq: int
    base_model: str
    deployed_version: str | None
    window_start: float
    window_end: float
    inference_count: int
    num_samples: int
    size_bytes: int
    sha256: str
    received_at: dt.datetime


class StoredSketch(BaseModel):
    """A stored upload for the workers: metadata plus the raw wire bytes."""

    seq: int
    base_model: str
    window_start: float
    window_end: float
    inference_count: int
    num_samples: int
    sha256: str
    data: bytes


# --- assignment and events ----------------------------------------------------------------
class Assignment(BaseModel):
    desired_version: str | None = Field(examples=["fmnist-cnn-d-3f9c-0007"])
    manifest: dict[str, Any] | None = Field(description="the signed manifest (qsae_shared.manifest)")
    reason: str = Field(examples=["retrain job 12: drift 0.21 > 0.10"])


class DeviceEventIn(DeviceSent):
    uuid: str = Field(min_length=1, max_length=64, examples=["a0c5d7e2-6f0b-4b8e-8f57-0e1a2b3c4d5e"])
    kind: EventKind = Field(examples=["applied"])
    version_id: str | None = Field(default=None, max_length=200, examples=["fmnist-cnn-d-3f9c-0007"])
    reason: str = Field(default="", max_length=2000, examples=["shadow agreement 0.97 >= 0.90"])
    at: float = Field(examples=[1764380123.5])


class DeviceEventBatch(DeviceSent):
    events: list[DeviceEventIn] = Field(min_length=1, max_length=500)


class EventAck(BaseModel):
    acked: list[str]


class DeviceEventPublic(Public):
    uuid: str
    kind: str
    version_id: str | None
    reason: str
    at: float
    received_at: dt.datetime


# --- devices (operator) -------------------------------------------------------------------
class DeviceCreate(Strict):
    name: str = Field(min_length=1, max_length=200, pattern=_NAME, examples=["line-3-camera-07"])
    labels: dict[str, str] = Field(default_factory=dict, examples=[{"cohort": "plant-a", "site": "lyon"}],
                                   description="free labels; `cohort` groups devices for rollouts and policies")
    base_model: str = Field(min_length=1, max_length=200, examples=["fmnist-cnn"])

    @field_validator("labels")
    @classmethod
    def _small_labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32 or any(len(k) > 100 or len(x) > 200 for k, x in v.items()):
            raise ValueError("at most 32 labels, keys up to 100 and values up to 200 characters")
        return v


class DeviceCreated(BaseModel):
    device_id: str = Field(examples=["d-3f9c2a1b7e4d5c60"])
    name: str
    enrollment_token: str = Field(description="one-time token for `qsae-agent enroll`; shown once",
                                  examples=["qe_4KQ..."])
    enrollment_expires_at: dt.datetime


class DevicePublic(Public):
    id: str
    name: str
    labels: dict[str, Any]
    cohort: str
    base_model: str
    state: DeviceState = "pending"
    enrolled_at: dt.datetime | None
    revoked_at: dt.datetime | None
    agent_version: str | None
    last_seen_at: dt.datetime | None
    deployed_version: str | None
    desired_version: str | None
    desired_reason: str
    previous_version: str | None
    pinned: bool
    drift_score: float | None
    compression_ratio: float | None = Field(default=None, description="of the deployed version")
    labelled_accuracy_1h: float | None = Field(default=None, description="telemetry of the last hour")
    estimated_accuracy_1h: float | None = Field(default=None, description="telemetry of the last hour")
    created_at: dt.datetime


class DeviceList(BaseModel):
    items: list[DevicePublic]
    total: int


class DeviceDetail(BaseModel):
    device: DevicePublic
    telemetry: list[TelemetryPublic] = Field(description="most recent records, oldest first")
    sketches: list[SketchPublic]
    events: list[DeviceEventPublic]
    jobs: list[JobPublic]
    versions: list[VersionPublic]


class PinRequest(Strict):
    version_id: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=500)


class RollbackRequest(Strict):
    reason: str = Field(default="", max_length=500)


class RepruneRequest(Strict):
    reason: str = Field(default="operator request", max_length=500)
    params: dict[str, Any] = Field(default_factory=dict, description="passed to the retrain job")


# --- jobs ---------------------------------------------------------------------------------
class JobPublic(Public):
    id: int
    device_id: str | None
    kind: str
    status: JobStatus
    idempotency_key: str
    trigger_reason: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    version_id: str | None
    priority: int
    attempts: int
    max_attempts: int
    error: str | None
    progress: float
    progress_message: str
    worker: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None


class JobList(BaseModel):
    items: list[JobPublic]
    total: int


class JobEnqueued(BaseModel):
    job: JobPublic
    created: bool = Field(description="false when an active job or the same idempotency key existed")


# --- versions -----------------------------------------------------------------------------
class VersionPublic(Public):
    id: str
    device_id: str | None
    base_model: str
    base_version: str
    mlflow_name: str | None
    mlflow_version: str | None
    mlflow_run_id: str | None
    mlflow_experiment_id: str | None = None
    manifest_sha256: str
    file_sha256s: list[str]
    download_bytes: int
    compression_ratio: float | None
    kl: float | None
    metrics: dict[str, Any]
    status: VersionStatus
    job_id: int | None
    created_at: dt.datetime
    mlflow_url: str | None = None


class VersionList(BaseModel):
    items: list[VersionPublic]
    total: int


class VersionStatusUpdate(Strict):
    status: VersionStatus


# --- policies -----------------------------------------------------------------------------
class PolicyValues(Strict):
    kl_budget: float = Field(gt=0, le=10, description="most KL(dense || pruned) in nats a version may cost",
                             examples=[0.05])
    min_compression: float = Field(ge=1, le=1000, description="least compression ratio worth deploying",
                                   examples=[8.0])
    accuracy_drop_pp: float = Field(gt=0, le=100, description="re-prune when accuracy falls this many points",
                                    examples=[3.0])
    drift_threshold: float = Field(gt=0, le=1, description="re-prune above this histogram drift (JS, 0..1)",
                                   examples=[0.1])
    interval_s: float = Field(ge=60, description="re-prune at least this often, seconds", examples=[86400])
    auto_deploy: bool = Field(default=True, description="deploy a passing version without a rollout")
    extra: dict[str, Any] = Field(default_factory=dict, description="method parameters for the workers")


class PolicyPublic(PolicyValues):
    model_config = ConfigDict(from_attributes=True, extra="ignore")
    name: str
    updated_at: dt.datetime | None = None


# --- rollouts -----------------------------------------------------------------------------
class RolloutCreate(Strict):
    version_id: str = Field(min_length=1, max_length=200)
    cohort: str = Field(min_length=1, max_length=100, examples=["plant-a"])
    stages: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0], min_length=1, max_length=20,
                                description="increasing shares of the cohort, the last one 1.0")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"max_accuracy_drop_pp": 2.0, "min_devices_reporting": 1.0},
        description="what the controller checks before advancing (or aborts on)")
    reason: str = Field(default="", max_length=500)

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[float]) -> list[float]:
        if any(not 0 < s <= 1 for s in v) or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("stages must be increasing shares in (0, 1]")
        if v[-1] != 1.0:
            raise ValueError("the last stage must be 1.0 (the whole cohort)")
        return v


class RolloutAction(Strict):
    reason: str = Field(default="", max_length=500)


class RolloutPublic(Public):
    id: int
    version_id: str
    cohort: str
    stages: list[float]
    stage: int
    thresholds: dict[str, Any]
    state: Literal["active", "paused", "completed", "aborted"]
    reason: str
    created_at: dt.datetime
    updated_at: dt.datetime
    devices: int = 0


# --- fleet, api keys, audit ---------------------------------------------------------------
class FleetSeriesPoint(BaseModel):
    start: float = Field(description="bucket start, unix seconds (server receive time)")
    records: int
    devices: int
    labelled_accuracy: float | None = Field(description="pooled: sum(correct) / sum(labelled)")
    estimated_accuracy: float | None = Field(description="mean of the records' estimates")
    mean_compression: float | None = Field(description="of the versions the records say they ran")


class FleetSeries(BaseModel):
    bucket_s: float
    points: list[FleetSeriesPoint]


class FleetSummary(BaseModel):
    devices: int
    by_state: dict[str, int]
    jobs_by_status: dict[str, int]
    versions: int
    mean_compression_deployed: float | None
    labelled_accuracy_1h: float | None
    estimated_accuracy_1h: float | None
    telemetry_records_1h: int


class ApiKeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Role


class ApiKeyCreated(BaseModel):
    id: str
    name: str
    role: Role
    api_key: str = Field(description="shown once")


class ApiKeyPublic(Public):
    id: str
    name: str
    role: Role
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class Me(BaseModel):
    id: str
    name: str
    role: Role


class AuditPublic(Public):
    id: int
    at: dt.datetime
    actor: str
    action: str
    subject_type: str
    subject_id: str
    details: dict[str, Any]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


DeviceDetail.model_rebuild()
