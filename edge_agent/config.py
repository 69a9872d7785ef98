"""Agent settings: `QSAE_AGENT_` environment variables over an optional TOML/JSON file.

Precedence (highest first): keyword arguments, environment variables, the config file, defaults.
The file is named by `config_file=` or `QSAE_AGENT_CONFIG_FILE`; `.toml` and `.json` are read.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from edge_agent.errors import ConfigError

ENV_PREFIX = "QSAE_AGENT_"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    config_file: Path | None = None  # TOML or JSON file with any of the fields below
    server_url: str = "http://127.0.0.1:8000"  # control plane base URL (no /api/v1)
    state_dir: Path = Path(".fleet/agent")  # credentials, outbox, models, pointers
    enrollment_token: str | None = None  # one-time token for `qsae-agent enroll`
    request_timeout_s: float = Field(10.0, gt=0)  # per HTTP request (long-polls add their wait)
    poll_interval_s: float | None = Field(None, gt=0)  # assignment poll; None = what enrollment said
    long_poll_s: float = Field(0.0, ge=0, le=30)  # server-side wait of an assignment poll; 0 = plain poll
    telemetry_interval_s: float = Field(60.0, gt=0)  # one telemetry record per window this long
    sketch_interval_s: float = Field(300.0, gt=0)  # emit a sketch at most this often ...
    sketch_min_inferences: int = Field(256, ge=1)  # ... once at least this many inferences are in it
    sketch_max_bytes: int = Field(256 * 1024, ge=16 * 1024)  # cap of one sketch upload
    sketch_in_background: bool = True  # update the sketch off predict()'s path (one extra thread)
    outbox_max_records: int = Field(10_000, ge=1)  # oldest records dropped (and counted) past this
    outbox_max_bytes: int = Field(256 * 2**20, ge=1024)  # ... or past this many bytes on disk
    telemetry_batch: int = Field(100, ge=1, le=500)  # records per telemetry POST
    backoff_base_s: float = Field(1.0, gt=0)  # first retry delay (before jitter)
    backoff_max_s: float = Field(300.0, gt=0)  # cap of a retry delay
    recent_inputs: int = Field(256, ge=8)  # inputs kept on the device for shadow evaluation
    pending_labels: int = Field(100_000, ge=1)  # predictions remembered for late feedback
    max_install_attempts: int = Field(3, ge=1)  # download/verify tries per version before giving up
    intra_op_threads: int = Field(1, ge=1)  # ONNX Runtime threads per session
    agent_version: str = "0.1.0"  # reported at enrollment

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ConfigFileSource(settings_cls, init_settings)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by `config_file` (keyword) or `QSAE_AGENT_CONFIG_FILE`."""

    def __init__(self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        kwargs = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        path = kwargs.get("config_file") or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        self.values = read_config_file(Path(path)) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML or JSON object of settings; a `[agent]` table in TOML is read if present."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read agent config file {path}: {exc}") from exc
    try:
        if path.suffix == ".json":
            doc = json.loads(raw)
        else:
            doc = tomllib.loads(raw.decode())
            doc = doc.get("agent", doc)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"agent config file {path} is not valid {path.suffix[1:] or 'TOML'}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"agent config file {path} must hold an object of settings")
    return doc


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> AgentSettings:
    """Settings from defaults < file < environment < `overrides` (None overrides are ignored)."""
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        kwargs["config_file"] = Path(config_file)
    try:
        return AgentSettings(**kwargs)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigError(f"invalid agent settings: {exc}") from exc
