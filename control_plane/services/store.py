"""`FleetStore`: the control plane's data-access layer for Python callers outside the API (the
dispatcher and controller in `workers/`, the CLI, the demo). Sync, no torch, no HTTP. Every
method is one transaction; results are plain pydantic objects (no live ORM rows).

    from control_plane.services import FleetStore
    store = FleetStore.from_settings()          # FLEET_* environment
    job = store.claim_next_job(worker="w1")     # None when idle; then store.wait_for_work(5)
    blobs = store.device_sketches(job.device_id, "fmnist-cnn", limit=20)
    sha = store.put_artifact(path_or_bytes)
    v = store.register_model_version(manifest, mlflow_name=..., mlflow_version=..., job_id=job.id)
    store.set_desired_version(job.device_id, v.id, reason=f"job {job.id}")
    store.complete_job(job.id, version_id=v.id)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from control_plane.artifacts import ArtifactStore, LocalArtifactStore
from control_plane.bus import SyncBus
from control_plane.keyring import trusted_public_keys
from control_plane.keys import load_or_create_signing_key
from control_plane.schemas import (
    DevicePublic,
    JobPublic,
    PolicyPublic,
    RolloutPublic,
    StoredSketch,
    TelemetryPublic,
    VersionPublic,
)
from control_plane.services import devices, jobs, policies, rollouts, sketches, telemetry, versions
from control_plane.services.devices import StateRules
from control_plane.services.uow import SyncDatabase
from control_plane.settings import Settings, get_settings
from qsae_shared.manifest import Manifest
from qsae_shared.signing import SigningKey


class FleetStore:
    def __init__(self, settings: Settings, *, artifact_store: ArtifactStore | None = None) -> None:
        self.settings = settings
        self.bus = SyncBus(settings.redis_url, settings.redis_prefix)
        self.db = SyncDatabase(str(settings.database_url), on_commit=self.bus.publish)
        self.artifacts: ArtifactStore = artifact_store or LocalArtifactStore(settings.artifact_dir)
        self._signer: SigningKey | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> FleetStore:
        return cls(settings or get_settings())

    def close(self) -> None:
        self.db.dispose()
        self.bus.close()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- signing ---------------------------------------------------------------------------
    @property
    def signer(self) -> SigningKey:
        if self._signer is None:
            self._signer = load_or_create_signing_key(self.settings.signing_key_file)
        return self._signer

    def signing_public_keys(self) -> dict[str, str]:
        """key id -> base64 public key, as devices pin them at enrollment."""
        return trusted_public_keys(self.signer)  # every key not retired (key rotation)

    def sign_manifest(self, manifest: Manifest) -> Manifest:
        return self.signer.sign_manifest(manifest)

    # --- jobs ------------------------------------------------------------------------------
    def enqueue_job(self, device_id: str | None, kind: str, idempotency_key: str, trigger_reason: str,
                    params: dict[str, Any] | None = None, priority: int = 100,
                    max_attempts: int | None = None) -> tuple[JobPublic, bool]:
        """Queue a job; (job, created). created=False when the key exists or the device already
        has a queued or running job (that job is returned)."""
        job, created = self.db.run(jobs.enqueue_job, device_id=device_id, kind=kind,
                                   idempotency_key=idempotency_key, trigger_reason=trigger_reason,
                                   params=params, priority=priority,
                                   max_attempts=max_attempts or self.settings.job_max_attempts)
        return JobPublic.model_validate(job), created

    def claim_next_job(self, worker: str, kinds: Sequence[str] | None = None) -> JobPublic | None:
        """The next queued job, now running for `worker`; None when the queue is empty."""
        job = self.db.run(jobs.claim_next_job, worker=worker, kinds=kinds, lease_s=self.settings.job_lease_s)
        return None if job is None else JobPublic.model_validate(job)

    def update_job_progress(self, job_id: int, progress: float, message: str = "") -> JobPublic:
        """Progress in [0, 1]; renews the lease. Raises ConflictError if the job was cancelled."""
        return JobPublic.model_validate(self.db.run(jobs.update_progress, job_id, progress, message))

    def complete_job(self, job_id: int, version_id: str | None = None,
                     result: dict[str, Any] | None = None) -> JobPublic:
        return JobPublic.model_validate(self.db.run(jobs.complete_job, job_id, version_id=version_id,
                                                    result=result))

    def fail_job(self, job_id: int, error: str, retry: bool = True) -> JobPublic:
        """Back to the queue while attempts remain and `retry`; else failed."""
        return JobPublic.model_validate(self.db.run(jobs.fail_job, job_id, error, retry=retry))

    def get_job(self, job_id: int) -> JobPublic:
        return JobPublic.model_validate(self.db.run(jobs.get_job, job_id))

    def list_jobs(self, status: str | None = None, device_id: str | None = None,
                  limit: int = 100) -> list[JobPublic]:
        items, _ = self.db.run(jobs.list_jobs, status=status, device_id=device_id, limit=limit)
        return [JobPublic.model_validate(j) for j in items]

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until a job is enqueued (Redis wake-up) or `timeout_s` passes; then poll claim."""
        return self.bus.wait_for_work(timeout_s)

    # --- sketches, telemetry ---------------------------------------------------------------
    def device_sketches(self, device_id: str, base_model: str, limit: int | None = None,
                        after_seq: int | None = None) -> list[bytes]:
        """Raw wire bytes of the device's uploads for `base_model`, oldest first (the newest
        `limit` if given); parse with qsae_shared.sketch.parse_sketch."""
        return [x.data for x in self.device_sketch_records(device_id, base_model, limit, after_seq)]

    def device_sketch_records(self, device_id: str, base_model: str, limit: int | None = None,
                              after_seq: int | None = None) -> list[StoredSketch]:
        return self.db.run(sketches.device_sketches, device_id, base_model, limit=limit, after_seq=after_seq)

    def recent_telemetry(self, device_id: str, limit: int = 100, after_seq: int | None = None) -> list[TelemetryPublic]:
        rows = self.db.run(telemetry.recent, device_id, limit=limit, after_seq=after_seq)
        return [TelemetryPublic.model_validate(r) for r in rows]

    # --- artifacts and versions ------------------------------------------------------------
    def put_artifact(self, data: bytes | Path) -> str:
        """Store a file (bytes or a path) in the content-addressed store; returns its sha256."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self.artifacts.put_bytes(bytes(data))
        return self.artifacts.put_file(Path(data))

    def artifact_path(self, sha256: str) -> Path | None:
        return self.artifacts.local_path(sha256)

    def register_model_version(self, manifest: Manifest | bytes | str | dict[str, Any], *,
                               mlflow_name: str | None = None, mlflow_version: str | int | None = None,
                               mlflow_run_id: str | None = None, mlflow_experiment_id: str | None = None,
                               status: str = "candidate", job_id: int | None = None) -> VersionPublic:
        """Record a version. Its files must already be stored (put_artifact); an unsigned
        manifest (empty `signature`) is signed with the server key. Idempotent for the same
        manifest; ConflictError for a different one under the same version_id."""
        v = self.db.run(versions.register_model_version, manifest, store=self.artifacts, signer=self.signer,
                        mlflow_name=mlflow_name, mlflow_version=None if mlflow_version is None else str(mlflow_version),
                        mlflow_run_id=mlflow_run_id, mlflow_experiment_id=mlflow_experiment_id, status=status,
                        job_id=job_id)
        return VersionPublic.model_validate(v)

    def get_version(self, version_id: str) -> VersionPublic:
        return VersionPublic.model_validate(self.db.run(versions.get_version, version_id))

    def version_manifest(self, version_id: str) -> Manifest:
        return Manifest.from_json(self.db.run(versions.get_version, version_id).manifest)

    def set_version_status(self, version_id: str, status: str, actor: str = "system:dispatcher") -> VersionPublic:
        return VersionPublic.model_validate(self.db.run(versions.set_status, version_id, status, actor=actor))

    def list_versions(self, device_id: str | None = None, base_model: str | None = None,
                      status: str | None = None, limit: int = 100, fleet_wide: bool = False) -> list[VersionPublic]:
        items, _ = self.db.run(versions.list_versions, device_id=device_id, base_model=base_model,
                               status=status, limit=limit, fleet_wide=fleet_wide)
        return [VersionPublic.model_validate(v) for v in items]

    # --- devices ---------------------------------------------------------------------------
    def _rules(self) -> StateRules:
        return StateRules(now=dt.datetime.now(dt.UTC), offline_after_s=self.settings.offline_after_s)

    def set_desired_version(self, device_id: str, version_id: str | None, reason: str,
                            actor: str = "system:dispatcher") -> DevicePublic:
        """Assign a version (None: none). Raises ConflictError for a pinned device, or a version
        of another device / base model / rejected. Long-polling agents are woken."""
        self.db.run(devices.set_desired_version, device_id, version_id, reason=reason, actor=actor)
        return self.get_device(device_id)

    def get_device(self, device_id: str) -> DevicePublic:
        return DevicePublic.model_validate(self.db.run(devices.device_with_state, device_id, self._rules()))

    def list_devices(self, cohort: str | None = None, state: str | None = None, base_model: str | None = None,
                     limit: int = 100_000) -> list[DevicePublic]:
        items, _ = self.db.run(devices.list_devices, self._rules(), cohort=cohort, state=state,
                               base_model=base_model, limit=limit)
        return [DevicePublic.model_validate(d) for d in items]

    def record_drift(self, device_id: str, score: float) -> None:
        self.db.run(devices.record_drift, device_id, score)

    def rollback_device(self, device_id: str, reason: str, actor: str = "system:controller") -> DevicePublic:
        self.db.run(devices.rollback_device, device_id, reason=reason, actor=actor)
        return self.get_device(device_id)

    # --- policies and rollouts -------------------------------------------------------------
    def policy_for(self, cohort: str) -> PolicyPublic:
        """The cohort's policy, or `default`."""
        return self.db.run(policies.effective_policy, cohort)

    def create_rollout(self, version_id: str, cohort: str, stages: Sequence[float] = (0.1, 0.5, 1.0),
                       thresholds: dict[str, float] | None = None, reason: str = "",
                       actor: str = "system:controller") -> RolloutPublic:
        r = self.db.run(rollouts.create_rollout, version_id=version_id, cohort=cohort, stages=list(stages),
                        thresholds=dict(thresholds or {}), reason=reason, actor=actor)
        return RolloutPublic.model_validate(r)

    def advance_rollout(self, rollout_id: int, reason: str = "", actor: str = "system:controller") -> RolloutPublic:
        return RolloutPublic.model_validate(self.db.run(rollouts.advance_rollout, rollout_id, actor=actor,
                                                        reason=reason))

    def abort_rollout(self, rollout_id: int, reason: str = "", actor: str = "system:controller") -> RolloutPublic:
        return RolloutPublic.model_validate(self.db.run(rollouts.abort_rollout, rollout_id, actor=actor,
                                                        reason=reason))

    def list_rollouts(self, state: str | None = None) -> list[RolloutPublic]:
        return [RolloutPublic.model_validate(r) for r in self.db.run(rollouts.list_rollouts, state=state)]

    def rollout_device_ids(self, rollout_id: int) -> list[str]:
        return [rd.device_id for rd in self.db.run(rollouts.rollout_devices, rollout_id)]
