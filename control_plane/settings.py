"""Every server-side process is configured here: one settings class, read from `FLEET_*` variables.

`get_settings()` builds it once per process (cached) and never at import, so tests and CLIs can set
the environment first and call `get_settings.cache_clear()` to re-read it. Paths that default to
places under `state_dir` are resolved against it when the settings are built.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


def _under_state_dir() -> Any:
    """The default of a field that lives under state_dir: None until `_fill_state_paths` resolves
    it, so that once built the field always holds its declared type."""
    return Field(default=None, validate_default=False)


class Settings(BaseSettings):
    """QSAE Fleet server settings; each field is the variable `FLEET_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore", validate_default=True)

    # Where the embedded default keeps its state (SQLite DB, artifacts, keys, MLflow store).
    state_dir: Path = Path(".fleet")
    # SQLAlchemy URL; default sqlite:////<abs state_dir>/fleet.db. `postgresql://...` in production
    # (the driver is chosen per use: asyncpg for the API, psycopg for sync callers).
    database_url: str = _under_state_dir()
    # redis://host:port/db; None = no Redis: wake-ups and assignment changes are found by polling,
    # rate limits are per process.
    redis_url: str | None = None
    # Prefix of every Redis key this deployment uses (lets test runs share one Redis).
    redis_prefix: str = "qsae:"
    # Content-addressed artifact folder; default <state_dir>/artifacts.
    artifact_dir: Path = _under_state_dir()
    # MLflow tracking (and registry) URI; default sqlite:////<abs state_dir>/mlflow.db.
    mlflow_tracking_uri: str = _under_state_dir()
    # Browser URL of an MLflow UI, only used to build links; None = no links.
    mlflow_ui_url: str | None = None
    # Ray cluster address for the workers; None = start a local Ray.
    ray_address: str | None = None
    # Ed25519 key that signs manifests; generated on first use; default <state_dir>/keys/signing.key.
    signing_key_file: Path = _under_state_dir()
    # If set, `qsae-fleet db upgrade` / the server ensure an admin API key with this exact value.
    bootstrap_admin_key: str | None = Field(default=None, repr=False)
    # Interface and port `qsae-fleet serve` binds to.
    host: str = "127.0.0.1"
    port: int = 8000
    # Uvicorn worker processes for `qsae-fleet serve`.
    workers: int = 1
    # Largest accepted sketch upload, bytes (413 above).
    max_sketch_bytes: int = 262_144
    # Largest accepted JSON request body, bytes (413 above).
    max_body_bytes: int = 1_048_576
    # Most telemetry records in one POST (422 above).
    max_telemetry_records: int = 500
    # A client has this long to send its request headers (`qsae-fleet serve` closes the connection
    # after) and at most this long between two pieces of a request body (408), seconds.
    client_timeout_s: float = 10.0
    # Requests per device per minute on the device API (429 with Retry-After above); 0 = no limit.
    rate_limit_per_minute: int = 600
    # How stale a cached token lookup may be: a revoked token stops working within this many
    # seconds on every replica. At most 1.0.
    token_cache_ttl_s: float = 0.5
    # Entries kept in the per-process token cache.
    token_cache_size: int = 200_000
    # Sketch samples the workers merge for one retrain (DESIGN: 512).
    calibration_size: int = 512
    # Longest `wait=` a device may ask for on its assignment long-poll, seconds.
    long_poll_max_s: float = 30.0
    # How often the agent should poll its assignment when there is no long-poll, seconds.
    poll_interval_s: float = 30.0
    # A device not heard from for this long counts as offline, seconds.
    offline_after_s: float = 300.0
    # Serve POST /api/v1/_noop (the ingest benchmark's baseline); off in production.
    noop_endpoint: bool = False
    # Run `db upgrade` when the app starts (the embedded default; keep off with several replicas).
    auto_migrate: bool = False
    # How long a one-time enrollment token stays valid, seconds.
    enrollment_ttl_s: float = 7 * 24 * 3600.0
    # Devices' last_seen_at / deployed_version from telemetry are written at most this often, seconds.
    touch_interval_s: float = 2.0
    # The telemetry writer waits this long for more requests to share a commit (0 = no wait), seconds.
    ingest_linger_s: float = 0.0
    # Telemetry records written in one group commit at most.
    ingest_batch_max: int = 5000
    # SQLAlchemy pool size per process (PostgreSQL).
    db_pool_size: int = 10
    # A running job with no progress for this long is considered lost and re-queued, seconds.
    job_lease_s: float = 300.0  # the dispatcher renews it every 10 s while a job runs
    # Attempts before a failing job stays failed.
    job_max_attempts: int = 3
    # Fashion-MNIST folder (the Debian package's by default).
    data_dir: Path = DEFAULT_DATA_DIR
    # Python log level of the server processes.
    log_level: str = "INFO"

    @field_validator("token_cache_ttl_s")
    @classmethod
    def _ttl_at_most_one_second(cls, v: float) -> float:
        if not 0 <= v <= 1.0:
            raise ValueError("token_cache_ttl_s must be within [0, 1.0] so revocation takes effect in 1 s")
        return v

    @model_validator(mode="after")
    def _fill_state_paths(self) -> Settings:
        state = self.state_dir.expanduser().resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{state / 'fleet.db'}"
        if self.artifact_dir is None:
            self.artifact_dir = state / "artifacts"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{state / 'mlflow.db'}"
        if self.signing_key_file is None:
            self.signing_key_file = state / "keys" / "signing.key"
        return self

    @property
    def is_sqlite(self) -> bool:
        return str(self.database_url).startswith("sqlite")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built on first call from the environment."""
    return Settings()
