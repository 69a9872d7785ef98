"""Operator API: roles, devices (create, list, detail, revoke, re-enroll), actions (re-prune,
roll back, pin), fleet summary, jobs, versions, policies, rollouts, API keys, audit."""

from __future__ import annotations

import time

import pytest

from tests.control_plane.cp_helpers import BASE_MODEL, bearer, make_device, make_sketch, make_version, record


def op(keys, role="operator"):
    return bearer(keys[role])


# --- roles ----------------------------------------------------------------------------------
def test_roles_are_enforced(client, keys):
    body = {"name": "cam-x", "base_model": BASE_MODEL}
    assert client.post("/api/v1/devices", json=body).status_code == 401
    assert client.post("/api/v1/devices", json=body, headers=bearer("qk_unknown-key-000000")).status_code == 401
    viewer = client.post("/api/v1/devices", json=body, headers=op(keys, "viewer"))
    assert viewer.status_code == 403 and "operator role" in viewer.json()["detail"]
    assert client.get("/api/v1/devices", headers=op(keys, "viewer")).status_code == 200
    assert client.post("/api/v1/apikeys", json={"name": "x", "role": "viewer"}, headers=op(keys)).status_code == 403


def test_revoked_api_key_stops_working(client, keys):
    made = client.post("/api/v1/apikeys", json={"name": "tmp", "role": "viewer"}, headers=op(keys, "admin"))
    assert made.status_code == 201
    key = made.json()["api_key"]
    assert client.get("/api/v1/devices", headers=bearer(key)).status_code == 200
    listed = client.get("/api/v1/apikeys", headers=op(keys, "admin")).json()
    assert {k["name"] for k in listed} >= {"tmp", "admin"} and all("hash" not in str(k) for k in listed)
    assert client.delete(f"/api/v1/apikeys/{made.json()['id']}", headers=op(keys, "admin")).status_code == 200
    assert client.get("/api/v1/devices", headers=bearer(key)).status_code == 401


# --- devices --------------------------------------------------------------------------------
def test_create_device_validates_and_rejects_duplicates(client, keys):
    ok = client.post("/api/v1/devices", headers=op(keys),
                     json={"name": "cam-1", "labels": {"cohort": "plant-a"}, "base_model": BASE_MODEL})
    assert ok.status_code == 201 and ok.json()["enrollment_token"].startswith("qe_")
    dup = client.post("/api/v1/devices", headers=op(keys), json={"name": "cam-1", "base_model": BASE_MODEL})
    assert dup.status_code == 409 and "cam-1" in dup.json()["detail"]
    assert client.post("/api/v1/devices", headers=op(keys),
                       json={"name": "bad name!", "base_model": BASE_MODEL}).status_code == 422
    assert client.post("/api/v1/devices", headers=op(keys), json={"name": "n"}).status_code == 422
    detail = client.get(f"/api/v1/devices/{ok.json()['device_id']}", headers=op(keys, "viewer")).json()
    assert detail["device"]["cohort"] == "plant-a" and detail["device"]["state"] == "pending"
    assert "token" not in str(detail["device"])


def test_list_filters_sorts_and_pages(client, keys):
    for i, cohort in enumerate(["a", "b", "a"]):
        make_device(client, keys, name=f"cam-{i}", labels={"cohort": cohort})
    client.post("/api/v1/devices", headers=op(keys), json={"name": "cam-pending", "base_model": BASE_MODEL})
    h = op(keys, "viewer")
    all_ = client.get("/api/v1/devices", headers=h).json()
    assert all_["total"] == 4 and [d["name"] for d in all_["items"]] == ["cam-0", "cam-1", "cam-2", "cam-pending"]
    a = client.get("/api/v1/devices?cohort=a&sort=name&order=desc", headers=h).json()
    assert [d["name"] for d in a["items"]] == ["cam-2", "cam-0"]
    pending = client.get("/api/v1/devices?state=pending", headers=h).json()
    assert [d["name"] for d in pending["items"]] == ["cam-pending"]
    page = client.get("/api/v1/devices?limit=2&offset=2", headers=h).json()
    assert page["total"] == 4 and len(page["items"]) == 2
    assert client.get("/api/v1/devices?q=pend", headers=h).json()["total"] == 1
    assert client.get("/api/v1/devices?sort=token_hash", headers=h).status_code == 422
    assert client.get("/api/v1/devices?state=sleepy", headers=h).status_code == 422


def test_device_detail_has_the_time_series(client, keys, device):
    client.post(f"/api/v1/devices/{device.id}/telemetry", headers=device.auth,
                json={"records": [record(i, estimated_accuracy=0.8 + i / 100) for i in range(3)]})
    client.post(f"/api/v1/devices/{device.id}/sketches", headers=device.auth, content=make_sketch(device.id))
    d = client.get(f"/api/v1/devices/{device.id}", headers=op(keys, "viewer"))
    assert d.status_code == 200
    body = d.json()
    assert [t["seq"] for t in body["telemetry"]] == [0, 1, 2]
    assert body["telemetry"][2]["estimated_accuracy"] == pytest.approx(0.82)
    assert len(body["sketches"]) == 1 and body["device"]["state"] == "healthy"
    assert client.get("/api/v1/devices/d-nope", headers=op(keys, "viewer")).status_code == 404


def test_revoke_and_reissue_enrollment(client, keys, device):
    r = client.delete(f"/api/v1/devices/{device.id}", headers=op(keys))
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert client.get(f"/api/v1/devices/{device.id}/assignment", headers=device.auth).status_code == 401
    assert client.post(f"/api/v1/devices/{device.id}/enrollment", headers=op(keys)).status_code == 409
    other = make_device(client, keys)
    new = client.post(f"/api/v1/devices/{other.id}/enrollment", headers=op(keys))
    assert new.status_code == 200
    assert client.get(f"/api/v1/devices/{other.id}/assignment", headers=other.auth).status_code == 401
    again = client.post("/api/v1/enroll", json={"enrollment_token": new.json()["enrollment_token"]})
    assert again.status_code == 200 and again.json()["device_id"] == other.id
    assert client.delete("/api/v1/devices/d-nope", headers=op(keys)).status_code == 404


# --- actions --------------------------------------------------------------------------------
def test_reprune_enqueues_one_job_per_device(client, keys, device, store):
    url = f"/api/v1/devices/{device.id}/reprune"
    first = client.post(url, headers=op(keys), json={"reason": "accuracy looks off", "params": {"kl_budget": 0.02}})
    assert first.status_code == 202 and first.json()["created"] is True
    job = first.json()["job"]
    assert job["status"] == "queued" and "accuracy looks off" in job["trigger_reason"]
    assert job["params"] == {"kl_budget": 0.02}
    second = client.post(url, headers=op(keys))
    assert second.json()["created"] is False and second.json()["job"]["id"] == job["id"]
    assert client.post(url, headers=op(keys, "viewer")).status_code == 403
    assert client.post("/api/v1/devices/d-nope/reprune", headers=op(keys)).status_code == 404
    listed = client.get(f"/api/v1/jobs?device_id={device.id}", headers=op(keys, "viewer")).json()
    assert listed["total"] == 1 and client.get(f"/api/v1/jobs/{job['id']}", headers=op(keys, "viewer")).json()["id"] == job["id"]
    cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=op(keys))
    assert cancelled.json()["status"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=op(keys)).status_code == 409
    assert client.get("/api/v1/jobs/999999", headers=op(keys, "viewer")).status_code == 404
    assert client.get("/api/v1/jobs?status=bogus", headers=op(keys, "viewer")).status_code == 422


def test_pin_and_rollback(client, keys, device, store):
    v1, v2 = make_version(store, "v-1", device.id), make_version(store, "v-2", device.id)
    url = f"/api/v1/devices/{device.id}"
    assert client.post(f"{url}/rollback", headers=op(keys)).status_code == 409  # nothing to go back to
    assert client.post(f"{url}/pin", headers=op(keys), json={"version_id": "v-unknown"}).status_code == 404
    store.set_desired_version(device.id, v1, reason="first")
    pinned = client.post(f"{url}/pin", headers=op(keys), json={"version_id": v2, "reason": "hold"})
    assert pinned.status_code == 200 and pinned.json()["pinned"] is True and pinned.json()["desired_version"] == v2
    from control_plane.errors import ConflictError

    with pytest.raises(ConflictError, match="pinned"):
        store.set_desired_version(device.id, v1, reason="auto deploy")
    rolled = client.post(f"{url}/rollback", headers=op(keys), json={"reason": "regressed"})
    assert rolled.status_code == 200 and rolled.json()["desired_version"] == v1
    unpinned = client.delete(f"{url}/pin", headers=op(keys))
    assert unpinned.json()["pinned"] is False


def test_version_of_another_device_cannot_be_pinned(client, keys, device, store):
    other = make_device(client, keys)
    theirs = make_version(store, "v-theirs", other.id)
    r = client.post(f"/api/v1/devices/{device.id}/pin", headers=op(keys), json={"version_id": theirs})
    assert r.status_code == 409 and other.id in r.json()["detail"]


# --- fleet, versions, policies ----------------------------------------------------------------
def test_fleet_summary_counts(client, keys, device, store):
    make_device(client, keys)
    client.post(f"/api/v1/devices/{device.id}/telemetry", headers=device.auth,
                json={"records": [record(0, labelled_count=10, labelled_correct=8, estimated_accuracy=0.7)]})
    v = make_version(store, "v-s", device.id, compression=10.0)
    client.post(f"/api/v1/devices/{device.id}/events", headers=device.auth,
                json={"events": [{"uuid": "u1", "kind": "applied", "version_id": v, "at": time.time()}]})
    s = client.get("/api/v1/fleet/summary", headers=op(keys, "viewer")).json()
    assert s["devices"] == 2 and s["by_state"]["healthy"] == 1 and s["by_state"]["offline"] == 1
    assert s["versions"] == 1 and s["mean_compression_deployed"] == pytest.approx(10.0)
    assert s["labelled_accuracy_1h"] == pytest.approx(0.8) and s["telemetry_records_1h"] == 1


def test_versions_list_detail_manifest_and_status(client, keys, device, store):
    v = make_version(store, "v-9", device.id, compression=14.0, kl=0.02)
    h = op(keys, "viewer")
    items = client.get(f"/api/v1/versions?device_id={device.id}", headers=h).json()
    assert items["total"] == 1 and items["items"][0]["compression_ratio"] == 14.0 and items["items"][0]["kl"] == 0.02
    assert client.get(f"/api/v1/versions/{v}/manifest", headers=h).json()["version_id"] == v
    assert client.get("/api/v1/versions/nope", headers=h).status_code == 404
    rej = client.patch(f"/api/v1/versions/{v}", headers=op(keys), json={"status": "rejected"})
    assert rej.json()["status"] == "rejected"
    assert client.patch(f"/api/v1/versions/{v}", headers=op(keys), json={"status": "great"}).status_code == 422
    pin = client.post(f"/api/v1/devices/{device.id}/pin", headers=op(keys), json={"version_id": v})
    assert pin.status_code == 409 and "rejected" in pin.json()["detail"]


def test_policies(client, keys):
    h = op(keys, "viewer")
    default = client.get("/api/v1/policies/default", headers=h).json()
    assert default["kl_budget"] > 0 and default["name"] == "default"
    assert client.get("/api/v1/policies/plant-a", headers=h).status_code == 404
    body = {"kl_budget": 0.03, "min_compression": 8, "accuracy_drop_pp": 2, "drift_threshold": 0.2,
            "interval_s": 3600, "auto_deploy": False}
    put = client.put("/api/v1/policies/plant-a", headers=op(keys), json=body)
    assert put.status_code == 200 and put.json()["min_compression"] == 8 and put.json()["auto_deploy"] is False
    assert [p["name"] for p in client.get("/api/v1/policies", headers=h).json()] == ["default", "plant-a"]
    assert client.put("/api/v1/policies/plant-a", headers=op(keys), json={**body, "kl_budget": -1}).status_code == 422
    assert client.put("/api/v1/policies/plant-a", headers=op(keys), json={**body, "bogus": 1}).status_code == 422
    assert client.delete("/api/v1/policies/plant-a", headers=op(keys)).status_code == 403
    assert client.delete("/api/v1/policies/plant-a", headers=op(keys, "admin")).status_code == 204
    assert client.delete("/api/v1/policies/plant-a", headers=op(keys, "admin")).status_code == 404


# --- rollouts -------------------------------------------------------------------------------
def test_rollout_lifecycle_and_abort_restores(client, keys, store):
    devs = [make_device(client, keys, labels={"cohort": "plant-a"}) for _ in range(4)]
    old = make_version(store, "fleet-v1", None)
    new = make_version(store, "fleet-v2", None)
    for d in devs:
        store.set_desired_version(d.id, old, reason="baseline")
    r = client.post("/api/v1/rollouts", headers=op(keys),
                    json={"version_id": new, "cohort": "plant-a", "stages": [0.25, 0.5, 1.0]})
    assert r.status_code == 201
    ro = r.json()
    assert ro["stage"] == 0 and ro["devices"] == 1 and ro["state"] == "active"
    busy = client.post("/api/v1/rollouts", headers=op(keys), json={"version_id": new, "cohort": "plant-a"})
    assert busy.status_code == 409
    adv = client.post(f"/api/v1/rollouts/{ro['id']}/advance", headers=op(keys)).json()
    assert adv["stage"] == 1 and adv["devices"] == 2
    assert client.post(f"/api/v1/rollouts/{ro['id']}/pause", headers=op(keys)).json()["state"] == "paused"
    assert client.post(f"/api/v1/rollouts/{ro['id']}/advance", headers=op(keys)).status_code == 409
    assert client.post(f"/api/v1/rollouts/{ro['id']}/resume", headers=op(keys)).json()["state"] == "active"
    moved = [d.id for d in devs if store.get_device(d.id).desired_version == new]
    assert len(moved) == 2
    ab = client.post(f"/api/v1/rollouts/{ro['id']}/abort", headers=op(keys), json={"reason": "canary regressed"})
    assert ab.json()["state"] == "aborted"
    assert all(store.get_device(d.id).desired_version == old for d in devs)
    assert client.get(f"/api/v1/rollouts/{ro['id']}", headers=op(keys, "viewer")).json()["reason"] == "canary regressed"
    assert client.post(f"/api/v1/rollouts/{ro['id']}/abort", headers=op(keys)).status_code == 409
    assert len(client.get("/api/v1/rollouts", headers=op(keys, "viewer")).json()) == 1


def test_rollout_bad_inputs(client, keys, device, store):
    mine = make_version(store, "dev-only", device.id)
    assert client.post("/api/v1/rollouts", headers=op(keys),
                       json={"version_id": mine, "cohort": "default"}).status_code == 409
    assert client.post("/api/v1/rollouts", headers=op(keys),
                       json={"version_id": "nope", "cohort": "default"}).status_code == 404
    assert client.post("/api/v1/rollouts", headers=op(keys),
                       json={"version_id": mine, "cohort": "x", "stages": [0.5, 0.2, 1.0]}).status_code == 422
    assert client.post("/api/v1/rollouts/999/advance", headers=op(keys)).status_code == 404


def test_audit_records_operator_actions(client, keys, device):
    client.delete(f"/api/v1/devices/{device.id}", headers=op(keys))
    events = client.get(f"/api/v1/audit?subject_id={device.id}", headers=op(keys, "viewer")).json()
    actions = [e["action"] for e in events]
    assert actions[0] == "device.revoke" and "device.create" in actions and "device.enroll" in actions


def test_me_names_the_key_and_its_role(client, keys, device):
    me = client.get("/api/v1/me", headers=op(keys, "viewer"))
    assert me.status_code == 200 and me.json()["role"] == "viewer" and me.json()["name"] == "viewer"
    assert client.get("/api/v1/me", headers=device.auth).status_code == 403


def test_device_list_carries_last_hour_accuracy(client, keys, device):
    client.post(f"/api/v1/devices/{device.id}/telemetry", headers=device.auth,
                json={"records": [record(0, labelled_count=10, labelled_correct=9, estimated_accuracy=0.8),
                                  record(1, labelled_count=10, labelled_correct=7, estimated_accuracy=0.6)]})
    item = client.get("/api/v1/devices", headers=op(keys, "viewer")).json()["items"][0]
    assert item["labelled_accuracy_1h"] == pytest.approx(0.8) and item["estimated_accuracy_1h"] == pytest.approx(0.7)


def test_fleet_series_buckets_telemetry(client, keys, device, store):
    v = make_version(store, "v-series", device.id, compression=12.0)
    client.post(f"/api/v1/devices/{device.id}/telemetry", headers=device.auth,
                json={"records": [record(0, labelled_count=4, labelled_correct=3, estimated_accuracy=0.7,
                                         deployed_version=v)]})
    h = op(keys, "viewer")
    series = client.get("/api/v1/fleet/series?bucket_s=60", headers=h).json()
    assert series["bucket_s"] == 60 and len(series["points"]) == 1
    p = series["points"][0]
    assert p["records"] == 1 and p["devices"] == 1 and p["labelled_accuracy"] == pytest.approx(0.75)
    assert p["mean_compression"] == pytest.approx(12.0) and abs(p["start"] - time.time()) < 120
    assert client.get("/api/v1/fleet/series?bucket_s=1&since=0", headers=h).status_code == 422


def test_dashboard_is_served(client):
    r = client.get("/dashboard/")
    assert r.status_code == 200 and "<html" in r.text.lower()
