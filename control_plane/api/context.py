"""Everything a request handler may need, built once per app in its lifespan."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from control_plane.artifacts import ArtifactStore
from control_plane.bus import AsyncBus
from control_plane.keyring import trusted_public_keys
from control_plane.metrics import Metrics
from control_plane.services.devices import StateRules
from control_plane.services.ingest import TelemetryWriter
from control_plane.services.uow import Database
from control_plane.settings import Settings
from control_plane.token_cache import TokenCache
from qsae_shared.signing import SigningKey


@dataclass
class AppContext:
    settings: Settings
    db: Database
    bus: AsyncBus
    writer: TelemetryWriter
    tokens: TokenCache
    store: ArtifactStore
    signer: SigningKey
    metrics: Metrics

    def rules(self) -> StateRules:
        return StateRules(now=dt.datetime.now(dt.UTC), offline_after_s=self.settings.offline_after_s)

    def signing_keys(self) -> dict[str, str]:
        return trusted_public_keys(self.signer)  # every key not retired (key rotation)

    def mlflow_url(self, run_id: str | None, experiment_id: str | None = None) -> str | None:
        base = self.settings.mlflow_ui_url
        if not base or not run_id:
            return None
        return f"{base.rstrip('/')}/#/experiments/{experiment_id or '0'}/runs/{run_id}"
