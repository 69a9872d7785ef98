"""Settings: FLEET_ variables, defaults under the state dir, the 1-second revocation bound."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from control_plane.settings import Settings


def test_defaults_live_under_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "st"))
    s = Settings()
    root = (tmp_path / "st").resolve()
    assert s.database_url == f"sqlite:///{root}/fleet.db"
    assert s.artifact_dir == root / "artifacts"
    assert s.signing_key_file == root / "keys" / "signing.key"
    assert s.mlflow_tracking_uri == f"sqlite:////{str(root).lstrip('/')}/mlflow.db"
    assert s.redis_url is None and s.ray_address is None


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("FLEET_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("FLEET_PORT", "9001")
    s = Settings()
    assert s.database_url == "postgresql://u@h/db" and s.port == 9001 and not s.is_sqlite


def test_token_cache_ttl_over_one_second_is_rejected(monkeypatch):
    monkeypatch.setenv("FLEET_TOKEN_CACHE_TTL_S", "2")
    with pytest.raises(ValidationError, match="token_cache_ttl_s"):
        Settings()


def test_admin_key_is_not_in_repr(monkeypatch):
    monkeypatch.setenv("FLEET_BOOTSTRAP_ADMIN_KEY", "s3cret-admin")
    assert "s3cret-admin" not in repr(Settings())
