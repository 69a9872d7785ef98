"""The service around the endpoints: health and readiness, metrics, error mapping (500 stays a
500), rate limits, Redis-less operation, the group-commit writer, migrations, the CLI, and the
import-weight promise (no torch, no ray)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from control_plane.db.engine import make_sync_engine
from control_plane.db.models import Base, Telemetry
from control_plane.main import create_app
from control_plane.schemas import TelemetryRecord
from control_plane.services import fleet
from control_plane.settings import Settings
from tests.control_plane.cp_helpers import REDIS_URL, bearer, make_device, make_version, record
from tests.scratch_db import scratch_postgres


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "redis": "ok", "telemetry_writer": "ok"}


def test_readyz_fails_without_redis_or_schema(settings, tmp_path):
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("unavailable")
    unmigrated = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.db'}", "redis_url": None})
    with TestClient(create_app(unmigrated)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "qsae-fleet db upgrade" in r.json()["checks"]["database"]


def test_metrics_exposes_requests_ingest_queue_jobs_and_states(client, keys, device, store):
    client.post(f"/api/v1/devices/{device.id}/telemetry", headers=device.auth, json={"records": [record(0)]})
    store.enqueue_job(device.id, "retrain", "m1", "test")
    text = client.get("/metrics").text
    assert 'qsae_http_requests_total{method="POST",route="/api/v1/devices/{device_id}/telemetry",status="200"} 1.0' in text
    assert 'qsae_ingest_records_total{kind="telemetry"} 1.0' in text
    assert "qsae_job_queue_depth 1.0" in text and 'qsae_jobs{status="queued"} 1.0' in text
    assert 'qsae_devices{state="retraining"} 1.0' in text


def test_unexpected_error_is_a_logged_500(client, keys, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fleet, "summary", boom)
    with caplog.at_level(logging.ERROR):
        r = client.get("/api/v1/fleet/summary", headers=bearer(keys["viewer"]))
    assert r.status_code == 500 and "disk on fire" not in r.text
    assert any("disk on fire" in (rec.exc_text or "") or "disk on fire" in str(rec.exc_info) for rec in caplog.records)


def test_lost_database_is_503(client, keys, monkeypatch):
    def down(*a, **k):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(fleet, "summary", down)
    r = client.get("/api/v1/fleet/summary", headers=bearer(keys["viewer"]))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"


@pytest.mark.parametrize("redis", [True, False])
def test_rate_limit_is_429_with_retry_after(settings, redis):
    limited = settings.model_copy(update={"rate_limit_per_minute": 3, "redis_url": REDIS_URL if redis else None,
                                          "redis_prefix": f"{settings.redis_prefix}{uuid.uuid4().hex[:4]}:"})
    with TestClient(create_app(limited)) as c:
        from control_plane.services import auth
        from control_plane.services.store import FleetStore

        st = FleetStore(limited)
        key = st.db.run(auth.create_api_key, name="o", role="operator", actor="t")[1]
        st.close()
        d = make_device(c, {"operator": key})
        url = f"/api/v1/devices/{d.id}/assignment"
        codes = [c.get(url, headers=d.auth).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get(url, headers=d.auth)
        assert 1 <= int(r.headers["retry-after"]) <= 60 and "slow down" in r.json()["detail"]


def test_long_poll_without_redis_finds_changes_by_polling(settings):
    plain = settings.model_copy(update={"redis_url": None})
    with TestClient(create_app(plain)) as c:
        from control_plane.services import auth
        from control_plane.services.store import FleetStore

        st = FleetStore(plain)
        key = st.db.run(auth.create_api_key, name="o", role="operator", actor="t")[1]
        d = make_device(c, {"operator": key})
        url = f"/api/v1/devices/{d.id}/assignment"
        etag = c.get(url, headers=d.auth).headers["etag"]
        v = make_version(st, "v-poll", d.id)
        import threading

        threading.Timer(0.3, lambda: st.set_desired_version(d.id, v, reason="no redis")).start()
        t0 = time.monotonic()
        r = c.get(url + "?wait=10", headers={**d.auth, "If-None-Match": etag})
        assert r.status_code == 200 and r.json()["desired_version"] == v and time.monotonic() - t0 < 3
        st.close()


def test_writer_acks_only_what_it_stored_and_isolates_a_bad_request(client, device, store):
    writer = client.app.state.ctx.writer

    def rec(seq: int) -> TelemetryRecord:
        return TelemetryRecord(**record(seq))

    async def many() -> list[object]:
        good = [writer.submit(device.id, [rec(i)]) for i in range(100)]
        broken = TelemetryRecord.model_construct(**{**record(0), "window_start": None})  # NOT NULL violation
        bad = writer.submit(device.id, [broken])
        return await asyncio.gather(*good, bad, return_exceptions=True)

    results = client.portal.call(many)
    assert results[:100] == [[i] for i in range(100)]
    assert isinstance(results[100], Exception) and "null" in str(results[100]).lower()
    stored = store.db.run(lambda s: s.scalar(select(func.count()).select_from(Telemetry)))
    assert stored == 100


def test_migrations_match_the_models(db_url):
    engine = make_sync_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


@pytest.fixture
def cli_state(tmp_path, monkeypatch):
    """The CLI's settings pointed at an empty state folder (SQLite), for one test."""
    from control_plane.settings import get_settings

    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("FLEET_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_cli_db_upgrade_and_apikey(cli_state):
    from control_plane.cli import app
    from control_plane.db.migrate import head_revision

    runner = CliRunner()
    up = runner.invoke(app, ["db", "upgrade"])
    assert up.exit_code == 0 and f"revision {head_revision()}" in up.output
    made = runner.invoke(app, ["apikey", "create", "--role", "viewer", "--name", "ci"])
    key = json.loads(made.output)
    assert key["role"] == "viewer" and key["api_key"].startswith("qk_")
    dev = runner.invoke(app, ["device", "create", "cam-cli", "--base-model", "m", "--label", "cohort=x"])
    assert json.loads(dev.output)["enrollment_token"].startswith("qe_")
    assert runner.invoke(app, ["apikey", "create", "--role", "king"]).exit_code != 0
    with TestClient(create_app(Settings(state_dir=cli_state))) as c:
        assert c.get("/api/v1/devices", headers=bearer(key["api_key"])).json()["total"] == 1


def test_cli_policy_set_changes_only_the_values_given(cli_state):
    from control_plane.cli import app
    from control_plane.services.policies import DEFAULT_POLICY

    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    made = runner.invoke(app, ["policy", "set", "retail", "--kl-budget", "0.09", "--no-auto-deploy"])
    assert made.exit_code == 0, made.output
    retail = json.loads(made.output)
    assert (retail["name"], retail["kl_budget"], retail["auto_deploy"]) == ("retail", 0.09, False)
    assert retail["drift_threshold"] == DEFAULT_POLICY.drift_threshold  # the rest from `default`
    bad = runner.invoke(app, ["policy", "set", "retail", "--kl-budget", "-1", "--min-compression", "4"])
    assert bad.exit_code != 0 and "kl_budget" in bad.output
    assert runner.invoke(app, ["policy", "set", "retail"]).exit_code != 0  # nothing to change
    listed = {p["name"]: p for p in json.loads(runner.invoke(app, ["policy", "list"]).output)}
    assert listed["default"]["kl_budget"] == DEFAULT_POLICY.kl_budget
    assert (listed["retail"]["kl_budget"], listed["retail"]["min_compression"]) == (0.09, DEFAULT_POLICY.min_compression)
    with TestClient(create_app(Settings(state_dir=cli_state))) as c:
        viewer = json.loads(runner.invoke(app, ["apikey", "create", "--role", "viewer"]).output)["api_key"]
        assert c.get("/api/v1/policies/retail", headers=bearer(viewer)).json()["kl_budget"] == 0.09


def test_importing_the_app_loads_neither_torch_nor_ray():
    code = ("import sys, control_plane.main, control_plane.services.store, control_plane.cli; "
            "control_plane.main.create_app; "
            "bad = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "FLEET_TOKEN_CACHE_TTL_S": "5"}  # invalid: settings must not be built at import
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_go_down_and_up_again(backend, tmp_path):
    from control_plane.db.migrate import current_revision, downgrade, head_revision, upgrade

    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite"
               else stack.enter_context(scratch_postgres("qsae_cp_mig", migrate=False)))
        upgrade(url)
        assert current_revision(url) == head_revision()
        downgrade(url, "base")
        assert current_revision(url) is None
        upgrade(url)
        assert current_revision(url) == head_revision()


def test_device_touches_are_written_in_the_background(settings):
    background = settings.model_copy(update={"touch_interval_s": 0.2})
    with TestClient(create_app(background)) as c:
        from control_plane.services import auth
        from control_plane.services.store import FleetStore

        st = FleetStore(background)
        key = st.db.run(auth.create_api_key, name="o", role="operator", actor="t")[1]
        d = make_device(c, {"operator": key})
        r = c.post(f"/api/v1/devices/{d.id}/telemetry", headers=d.auth,
                   json={"records": [record(0, deployed_version="v-bg")]})
        assert r.status_code == 200
        deadline = time.monotonic() + 5
        while st.get_device(d.id).deployed_version != "v-bg" and time.monotonic() < deadline:
            time.sleep(0.05)
        got = st.get_device(d.id)
        assert got.deployed_version == "v-bg" and got.last_seen_at is not None
        st.close()


def test_telemetry_sent_before_an_install_does_not_set_the_version_back(settings):
    """The agent sends in order: the old version's last window, then `applied`. Touches are written
    later, in the background, and must not undo what the event recorded; a rollback's telemetry,
    received after the event, still moves the version."""
    from control_plane.services import auth
    from control_plane.services.store import FleetStore

    slow = settings.model_copy(update={"touch_interval_s": 3600.0})  # touches written at shutdown
    st = FleetStore(slow)
    key = st.db.run(auth.create_api_key, name="o", role="operator", actor="t")[1]

    def send(c, d, telemetry=None, event=None):
        if telemetry is not None:
            r = c.post(f"/api/v1/devices/{d.id}/telemetry", headers=d.auth,
                       json={"records": [record(telemetry[0], deployed_version=telemetry[1])]})
            assert r.status_code == 200, r.text
        if event is not None:
            r = c.post(f"/api/v1/devices/{d.id}/events", headers=d.auth, json={"events": [
                {"uuid": str(uuid.uuid4()), "kind": event[0], "version_id": event[1], "reason": "", "at": time.time()}]})
            assert r.status_code == 200, r.text

    with TestClient(create_app(slow)) as c:
        d = make_device(c, {"operator": key})
        send(c, d, telemetry=(0, "v-old"), event=("applied", "v-new"))
    assert st.get_device(d.id).deployed_version == "v-new"
    with TestClient(create_app(slow)) as c:
        send(c, d, event=("rolled_back", "v-new"))
        send(c, d, telemetry=(1, "v-old"))
    assert st.get_device(d.id).deployed_version == "v-old"
    st.close()


def test_rate_limit_is_shared_between_replicas_through_redis(settings):
    shared = settings.model_copy(update={"rate_limit_per_minute": 3, "redis_prefix": f"{settings.redis_prefix}rl:"})
    with TestClient(create_app(shared)) as a, TestClient(create_app(shared)) as b:
        from control_plane.services import auth
        from control_plane.services.store import FleetStore

        st = FleetStore(shared)
        key = st.db.run(auth.create_api_key, name="o", role="operator", actor="t")[1]
        st.close()
        d = make_device(a, {"operator": key})
        url = f"/api/v1/devices/{d.id}/assignment"
        assert [a.get(url, headers=d.auth).status_code for _ in range(3)] == [200, 200, 200]
        deadline = time.monotonic() + 5
        while b.get(url, headers=d.auth).status_code != 429:  # replica b learns a's count within ~1 s
            assert time.monotonic() < deadline, "replica b never saw replica a's requests"
            time.sleep(0.3)
