"""Device API: enroll, telemetry, sketches, assignment, artifacts, events; and what a device
sees with a wrong, missing, foreign or revoked token."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from control_plane.db.models import DeviceEvent, SketchRecord, Telemetry
from control_plane.services.store import FleetStore
from qsae_shared.manifest import Manifest
from qsae_shared.signing import verify_manifest
from tests.control_plane.cp_helpers import (
    BASE_MODEL,
    Dev,
    bearer,
    make_device,
    make_sketch,
    make_version,
    record,
)


def count(store: FleetStore, model, device_id: str) -> int:
    return store.db.run(lambda s: s.scalar(select(func.count()).select_from(model)
                                           .where(model.device_id == device_id)))


# --- enroll ---------------------------------------------------------------------------------
def test_enroll_returns_credentials_and_pinnable_keys(client, keys, store):
    r = client.post("/api/v1/devices", headers=bearer(keys["operator"]),
                    json={"name": "cam-1", "labels": {"cohort": "a"}, "base_model": BASE_MODEL})
    token = r.json()["enrollment_token"]
    e = client.post("/api/v1/enroll", json={"enrollment_token": token, "agent_version": "0.1"})
    assert e.status_code == 200
    body = e.json()
    assert body["device_id"] == r.json()["device_id"] and body["device_token"].startswith("qd_")
    assert body["signing_keys"] == store.signing_public_keys()
    assert body["base_model"] == BASE_MODEL and body["poll_interval_s"] > 0
    again = client.post("/api/v1/enroll", json={"enrollment_token": token})
    assert again.status_code == 401 and "already used" in again.json()["detail"]


def test_enroll_rejects_unknown_and_malformed_tokens(client):
    assert client.post("/api/v1/enroll", json={"enrollment_token": "qe_nope-nope-nope"}).status_code == 401
    assert client.post("/api/v1/enroll", json={"token": "x"}).status_code == 422


def test_enroll_of_revoked_device_fails(client, keys):
    r = client.post("/api/v1/devices", headers=bearer(keys["operator"]),
                    json={"name": "cam-r", "base_model": BASE_MODEL})
    client.delete(f"/api/v1/devices/{r.json()['device_id']}", headers=bearer(keys["operator"]))
    e = client.post("/api/v1/enroll", json={"enrollment_token": r.json()["enrollment_token"]})
    assert e.status_code == 401


# --- telemetry ------------------------------------------------------------------------------
def test_telemetry_is_acked_and_idempotent_by_seq(client, device, store):
    url = f"/api/v1/devices/{device.id}/telemetry"
    r = client.post(url, headers=device.auth, json={"records": [record(0), record(1, deployed_version="v9")]})
    assert r.status_code == 200 and r.json() == {"acked": [0, 1]}
    dup = client.post(url, headers=device.auth, json={"records": [record(1), record(2)]})
    assert dup.json() == {"acked": [1, 2]}
    assert count(store, Telemetry, device.id) == 3
    d = store.get_device(device.id)
    assert d.last_seen_at is not None and d.deployed_version == "v9"


def test_telemetry_auth_errors(client, keys, device):
    other = make_device(client, keys)
    url = f"/api/v1/devices/{device.id}/telemetry"
    body = {"records": [record(0)]}
    assert client.post(url, json=body).status_code == 401
    wrong = client.post(url, json=body, headers=bearer("qd_not-a-real-token"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post(url, json=body, headers=bearer("garbage")).status_code == 401
    foreign = client.post(url, json=body, headers=other.auth)
    assert foreign.status_code == 403 and device.id in foreign.json()["detail"]
    assert client.post(url, json=body, headers=bearer(keys["admin"])).status_code == 403


@pytest.mark.parametrize("bad", [
    {"records": []},
    {"records": [{"seq": 1}]},
    {"records": [{**record(0), "seq": -1}]},
    {"records": [{**record(0), "estimated_accuracy": 1.5}]},
    {"records": [{**record(0), "labelled_correct": 11}]},
    {"records": [{**record(0), "window_end": 0.0}]},
])
def test_telemetry_malformed_is_422(client, device, bad):
    r = client.post(f"/api/v1/devices/{device.id}/telemetry", headers=device.auth, json=bad)
    assert r.status_code == 422


def test_telemetry_from_a_newer_agent_with_extra_fields_is_stored(client, device, store):
    r = client.post(f"/api/v1/devices/{device.id}/telemetry", headers=device.auth,
                    json={"records": [{**record(0), "new_field": 1}], "batch_note": "x"})
    assert r.status_code == 200 and r.json() == {"acked": [0]}


def test_telemetry_too_many_records_and_too_large(client, device):
    url = f"/api/v1/devices/{device.id}/telemetry"
    many = client.post(url, headers=device.auth, json={"records": [record(i) for i in range(51)]})
    assert many.status_code == 422 and "at most 50" in many.json()["detail"]
    huge = client.post(url, headers=device.auth, content=b'{"records": [' + b" " * 300_000 + b"]}",
                       )
    assert huge.status_code == 413 and "cap" in huge.json()["detail"]


def test_revoked_token_stops_within_a_second(client, keys, device):
    url = f"/api/v1/devices/{device.id}/telemetry"
    assert client.post(url, headers=device.auth, json={"records": [record(0)]}).status_code == 200
    # Revoke behind the app's back (as another replica would): only the revocation log tells it.
    from control_plane.services import devices as dsvc
    from control_plane.services.uow import SyncDatabase

    db = SyncDatabase(str(client.app.state.ctx.settings.database_url))
    db.run(dsvc.revoke_device, device.id, actor="test")
    db.dispose()
    time.sleep(1.0)
    r = client.post(url, headers=device.auth, json={"records": [record(1)]})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


# --- sketches -------------------------------------------------------------------------------
def test_sketch_upload_is_stored_once(client, device, store):
    url = f"/api/v1/devices/{device.id}/sketches"
    data = make_sketch(device.id, seq=3)
    hdr = {**device.auth, "Content-Type": "application/octet-stream"}
    r = client.post(url, headers=hdr, content=data)
    assert r.status_code == 200 and r.json() == {"seq": 3, "stored": True}
    again = client.post(url, headers=hdr, content=data)
    assert again.json() == {"seq": 3, "stored": False}
    assert store.device_sketches(device.id, BASE_MODEL) == [data]


def test_malformed_sketch_is_422_with_the_reason(client, device):
    url = f"/api/v1/devices/{device.id}/sketches"
    data = make_sketch(device.id)
    bad_magic = client.post(url, headers=device.auth, content=b"XXXX" + data[4:])
    assert bad_magic.status_code == 422 and "bad magic" in bad_magic.json()["detail"]
    truncated = client.post(url, headers=device.auth, content=data[:-10])
    assert truncated.status_code == 422 and "truncated" in truncated.json()["detail"]


def test_oversized_sketch_is_413(client, device):
    r = client.post(f"/api/v1/devices/{device.id}/sketches", headers=device.auth, content=b"Q" * 262_145)
    assert r.status_code == 413


def test_sketch_of_another_device_or_base_model_is_refused(client, device):
    url = f"/api/v1/devices/{device.id}/sketches"
    foreign = client.post(url, headers=device.auth, content=make_sketch("d-someone-else"))
    assert foreign.status_code == 403
    wrong_model = client.post(url, headers=device.auth, content=make_sketch(device.id, base_model="other"))
    assert wrong_model.status_code == 422 and "base model" in wrong_model.json()["detail"]


# --- assignment -----------------------------------------------------------------------------
def test_assignment_etag_and_manifest(client, device, store):
    url = f"/api/v1/devices/{device.id}/assignment"
    r = client.get(url, headers=device.auth)
    assert r.status_code == 200 and r.json()["desired_version"] is None
    etag = r.headers["etag"]
    assert client.get(url, headers={**device.auth, "If-None-Match": etag}).status_code == 304
    vid = make_version(store, "v-a1", device.id)
    store.set_desired_version(device.id, vid, reason="test deploy")
    r2 = client.get(url, headers={**device.auth, "If-None-Match": etag})
    assert r2.status_code == 200 and r2.headers["etag"] != etag
    body = r2.json()
    assert body["desired_version"] == vid and body["reason"] == "test deploy"
    m = Manifest.from_dict(body["manifest"])
    verify_manifest(m, store.signing_public_keys())  # the server signed it
    assert client.get(url, headers={**device.auth, "If-None-Match": r2.headers["etag"]}).status_code == 304


def test_assignment_long_poll_wakes_on_change(client, device, store):
    url = f"/api/v1/devices/{device.id}/assignment"
    etag = client.get(url, headers=device.auth).headers["etag"]
    vid = make_version(store, "v-lp", device.id)
    threading.Timer(0.5, lambda: store.set_desired_version(device.id, vid, reason="wake")).start()
    t0 = time.monotonic()
    r = client.get(url + "?wait=20", headers={**device.auth, "If-None-Match": etag})
    waited = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["desired_version"] == vid
    assert 0.4 < waited < 5


def test_assignment_long_poll_times_out_with_304(client, device):
    url = f"/api/v1/devices/{device.id}/assignment"
    etag = client.get(url, headers=device.auth).headers["etag"]
    t0 = time.monotonic()
    r = client.get(url + "?wait=1", headers={**device.auth, "If-None-Match": etag})
    assert r.status_code == 304 and 0.9 < time.monotonic() - t0 < 4


def test_assignment_of_other_device_is_403(client, keys, device):
    other = make_device(client, keys)
    assert client.get(f"/api/v1/devices/{device.id}/assignment", headers=other.auth).status_code == 403


# --- artifacts ------------------------------------------------------------------------------
def test_artifact_download_with_range_and_cache_headers(client, device, store, keys):
    data = bytes(range(256)) * 40
    sha = store.put_artifact(data)
    url = f"/api/v1/artifacts/{sha}"
    r = client.get(url, headers=device.auth)
    assert r.status_code == 200 and r.content == data
    assert "immutable" in r.headers["cache-control"] and r.headers["etag"] == f'"{sha}"'
    part = client.get(url, headers={**device.auth, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert client.get(url, headers=bearer(keys["viewer"])).status_code == 200
    assert client.get(url).status_code == 401
    assert client.get("/api/v1/artifacts/" + "0" * 64, headers=device.auth).status_code == 404
    assert client.get("/api/v1/artifacts/not-a-sha", headers=device.auth).status_code == 422


# --- events ---------------------------------------------------------------------------------
def test_events_are_idempotent_and_applied_sets_deployed_version(client, device, store):
    url = f"/api/v1/devices/{device.id}/events"
    ev = {"uuid": "e-1", "kind": "applied", "version_id": "v-x", "reason": "shadow ok", "at": time.time()}
    r = client.post(url, headers=device.auth, json={"events": [ev]})
    assert r.status_code == 200 and r.json() == {"acked": ["e-1"]}
    assert client.post(url, headers=device.auth, json={"events": [ev]}).json() == {"acked": ["e-1"]}
    assert count(store, DeviceEvent, device.id) == 1
    assert store.get_device(device.id).deployed_version == "v-x"
    bad = client.post(url, headers=device.auth, json={"events": [{**ev, "kind": "exploded"}]})
    assert bad.status_code == 422


def test_device_cannot_use_operator_endpoints(client, device: Dev):
    r = client.get("/api/v1/devices", headers=device.auth)
    assert r.status_code == 403 and "API key" in r.json()["detail"]


def test_sketch_rows_hold_the_bytes(client, device, store):
    data = make_sketch(device.id, seq=5)
    client.post(f"/api/v1/devices/{device.id}/sketches", headers=device.auth, content=data)
    assert count(store, SketchRecord, device.id) == 1
    rec = store.device_sketch_records(device.id, BASE_MODEL)[0]
    assert rec.seq == 5 and rec.data == data and rec.num_samples == 8
