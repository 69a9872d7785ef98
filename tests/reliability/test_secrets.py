"""Secrets: bearer tokens, enrollment tokens and API keys are stored only as hashes, and never
appear in a log line (server or agent, at DEBUG), not even a wrong token someone tried."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

import httpx
import pytest
from sqlalchemy import text

from control_plane.db.models import Base
from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.enroll import enroll
from tests.control_plane.cp_helpers import record
from tests.reliability.conftest import live_env
from tests.reliability.helpers import bearer

ADMIN = f"qk_secrets_{uuid.uuid4().hex}"


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture(scope="module")
def server(settings, live_factory):
    return live_factory(live_env(settings, ADMIN, FLEET_LOG_LEVEL="DEBUG"))


@pytest.fixture(scope="module")
def secrets_used(server) -> dict[str, str]:
    """Walk every path that handles a secret, against the live server; returns the secrets."""
    out: dict[str, str] = {"admin": ADMIN}
    with httpx.Client(base_url=server.url, timeout=10) as c:
        admin = bearer(ADMIN)
        made = c.post("/api/v1/devices", headers=admin, json={"name": f"sec-{uuid.uuid4().hex[:6]}", "base_model": "m"})
        assert made.status_code == 201
        out["enrollment"] = made.json()["enrollment_token"]
        e = c.post("/api/v1/enroll", json={"enrollment_token": out["enrollment"], "agent_version": "t"})
        assert e.status_code == 200
        out["device"], device_id = e.json()["device_token"], e.json()["device_id"]
        assert c.post("/api/v1/enroll", json={"enrollment_token": out["enrollment"]}).status_code == 401  # reused
        assert c.post(f"/api/v1/devices/{device_id}/telemetry", headers=bearer(out["device"]),
                      json={"records": [record(0)]}).status_code == 200
        key = c.post("/api/v1/apikeys", headers=admin, json={"name": "ops", "role": "operator"})
        assert key.status_code == 201
        out["apikey"] = key.json()["api_key"]
        assert c.get("/api/v1/fleet/summary", headers=bearer(out["apikey"])).status_code == 200
        out["wrong_device"] = "qd_" + uuid.uuid4().hex + uuid.uuid4().hex
        out["wrong_key"] = "qk_" + uuid.uuid4().hex + uuid.uuid4().hex
        assert c.get(f"/api/v1/devices/{device_id}/assignment", headers=bearer(out["wrong_device"])).status_code == 401
        assert c.get("/api/v1/devices", headers=bearer(out["wrong_key"])).status_code == 401
        assert c.post("/api/v1/enroll", json={"enrollment_token": "qe_" + "z" * 40}).status_code == 401
        re = c.post(f"/api/v1/devices/{device_id}/enrollment", headers=admin)
        assert re.status_code == 200
        out["reissued"] = re.json()["enrollment_token"]
        assert c.delete(f"/api/v1/apikeys/{key.json()['id']}", headers=admin).status_code == 200
    return out


def test_the_database_holds_only_hashes(store, secrets_used) -> None:
    dump = []
    for table in Base.metadata.sorted_tables:
        dump += store.db.run(lambda s, t=table.name: [r[0] for r in s.execute(text(f"SELECT x::text FROM {t} x"))])
    everything = "\n".join(dump)
    for name, secret in secrets_used.items():
        assert secret not in everything, f"the {name} secret is stored in clear"
    for name in ("admin", "device", "apikey"):  # ... and what is stored instead is its hash
        assert sha(secrets_used[name]) in everything, name


def test_the_server_log_holds_no_secret(server, secrets_used) -> None:
    log = server.log.read_text()
    assert "DEBUG" in log or "INFO" in log  # the server did log, verbosely
    for name, secret in secrets_used.items():
        assert secret not in log, f"the {name} secret is in the server log"
        assert secret[3:20] not in log, f"part of the {name} secret is in the server log"


def test_the_agent_logs_no_token_and_keeps_it_private(server, settings, tmp_path, caplog) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        made = c.post("/api/v1/devices", headers=bearer(ADMIN), json={"name": f"ag-{uuid.uuid4().hex[:6]}",
                                                                     "base_model": "m"})
    token = made.json()["enrollment_token"]
    caplog.set_level(logging.DEBUG)
    agent_settings = load_settings(state_dir=tmp_path / "agent", server_url=server.url, telemetry_interval_s=1)
    creds = enroll(agent_settings, token)
    agent = Agent(agent_settings)
    agent.flush(force=True)
    agent.tick()
    agent.close()
    assert len(caplog.records) > 0
    assert token not in caplog.text and creds.device_token not in caplog.text
    assert creds.device_token[3:20] not in caplog.text
    mode = os.stat(tmp_path / "agent" / "credentials.json").st_mode & 0o777
    assert mode == 0o600
