"""The authorization matrix: every operation of the OpenAPI called by every kind of caller (no token,
garbage, unknown, revoked, each operator role, the device itself, another device), and each answer
is what the matrix below says. Plus: a revoked device token or API key stops working within a
second on another replica."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.main import create_app
from control_plane.services import auth
from tests.reliability.helpers import Dev, bearer, new_device

# Who may call each operation of the API. "device": only the device named in the path;
# "any": any valid device token or API key; "public": no credentials needed (the answer must not
# depend on them); a role: an API key with that role or above (viewer < operator < admin).
MATRIX: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/devices/{device_id}/telemetry"): "device",
    ("GET", "/api/v1/devices/{device_id}/assignment"): "device",
    ("POST", "/api/v1/devices/{device_id}/sketches"): "device",
    ("POST", "/api/v1/devices/{device_id}/events"): "device",
    ("GET", "/api/v1/artifacts/{sha256}"): "any",
    ("HEAD", "/api/v1/artifacts/{sha256}"): "any",
    ("POST", "/api/v1/enroll"): "public",
    ("POST", "/api/v1/devices"): "operator",
    ("GET", "/api/v1/devices"): "viewer",
    ("GET", "/api/v1/devices/{device_id}"): "viewer",
    ("DELETE", "/api/v1/devices/{device_id}"): "operator",
    ("POST", "/api/v1/devices/{device_id}/enrollment"): "operator",
    ("POST", "/api/v1/devices/{device_id}/reprune"): "operator",
    ("POST", "/api/v1/devices/{device_id}/rollback"): "operator",
    ("POST", "/api/v1/devices/{device_id}/pin"): "operator",
    ("DELETE", "/api/v1/devices/{device_id}/pin"): "operator",
    ("GET", "/api/v1/fleet/summary"): "viewer",
    ("GET", "/api/v1/fleet/series"): "viewer",
    ("GET", "/api/v1/jobs"): "viewer",
    ("GET", "/api/v1/jobs/{job_id}"): "viewer",
    ("POST", "/api/v1/jobs/{job_id}/cancel"): "operator",
    ("GET", "/api/v1/versions"): "viewer",
    ("GET", "/api/v1/versions/{version_id}"): "viewer",
    ("PATCH", "/api/v1/versions/{version_id}"): "operator",
    ("GET", "/api/v1/versions/{version_id}/manifest"): "viewer",
    ("GET", "/api/v1/policies"): "viewer",
    ("GET", "/api/v1/policies/{name}"): "viewer",
    ("PUT", "/api/v1/policies/{name}"): "operator",
    ("DELETE", "/api/v1/policies/{name}"): "admin",
    ("GET", "/api/v1/rollouts"): "viewer",
    ("POST", "/api/v1/rollouts"): "operator",
    ("GET", "/api/v1/rollouts/{rollout_id}"): "viewer",
    ("POST", "/api/v1/rollouts/{rollout_id}/advance"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/abort"): "operator",
    ("GET", "/api/v1/me"): "viewer",
    ("GET", "/api/v1/apikeys"): "admin",
    ("POST", "/api/v1/apikeys"): "admin",
    ("DELETE", "/api/v1/apikeys/{key_id}"): "admin",
    ("GET", "/api/v1/audit"): "viewer",
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "public",
}
ROLE_ORDER = ("viewer", "operator", "admin")
CALLERS = ("none", "garbage", "unknown_device_token", "unknown_api_key", "revoked_device", "revoked_api_key",
           "viewer", "operator", "admin", "device_self", "device_other")


def expected(access: str, caller: str) -> str:
    """'401', '403', 'allowed' (anything but 401/403/5xx) or 'same' (public: as without credentials)."""
    if access == "public":
        return "same"
    if caller in ("none", "garbage", "unknown_device_token", "unknown_api_key", "revoked_device", "revoked_api_key"):
        return "401"
    if access == "any":
        return "allowed"
    if access == "device":
        return "allowed" if caller == "device_self" else "403"
    if caller.startswith("device"):
        return "403"
    return "allowed" if ROLE_ORDER.index(caller) >= ROLE_ORDER.index(access) else "403"


def operations(app: Any) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            ops.append((method.upper(), path, op))
    return ops


@pytest.fixture(scope="module")
def cast(client: TestClient, keys: dict[str, str], store) -> dict[str, Any]:
    """The callers' credentials, and the devices the paths name."""
    me, other, victim, revoked = (new_device(client, keys["operator"]) for _ in range(4))
    assert client.delete(f"/api/v1/devices/{revoked.id}", headers=bearer(keys["operator"])).status_code == 200
    gone, gone_secret = store.db.run(auth.create_api_key, name=f"gone-{uuid.uuid4().hex[:6]}", role="admin",
                                     actor="test")
    assert client.delete(f"/api/v1/apikeys/{gone.id}", headers=bearer(keys["admin"])).status_code == 200
    headers = {"none": {}, "garbage": {"Authorization": "Bearer not-a-token"},
               "unknown_device_token": bearer("qd_" + "x" * 43), "unknown_api_key": bearer("qk_" + "y" * 43),
               "revoked_device": revoked.auth, "revoked_api_key": bearer(gone_secret),
               "viewer": bearer(keys["viewer"]), "operator": bearer(keys["operator"]), "admin": bearer(keys["admin"]),
               "device_self": me.auth, "device_other": other.auth}
    return {"headers": headers, "me": me, "victim": victim}


def request_for(method: str, path: str, op: dict[str, Any], cast: dict[str, Any]) -> dict[str, Any]:
    me: Dev = cast["me"]
    access = MATRIX[(method, path)]
    values = {"device_id": me.id if access == "device" else cast["victim"].id, "sha256": "0" * 64,
              "job_id": "999999999", "rollout_id": "999999999", "version_id": "v-does-not-exist",
              "name": "no-such-cohort", "key_id": "k-does-not-exist"}
    url = path.format(**{k: v for k, v in values.items() if "{" + k + "}" in path})
    kwargs: dict[str, Any] = {}
    if "requestBody" in op:
        if "application/octet-stream" in op["requestBody"].get("content", {}):
            kwargs["content"] = b"not a sketch"
            kwargs["headers"] = {"Content-Type": "application/octet-stream"}
        else:
            kwargs["json"] = {}
    return {"method": method, "url": url, **kwargs}


def test_every_operation_is_in_the_matrix(client: TestClient) -> None:
    ops = {(m, p) for m, p, _ in operations(client.app)}
    missing = sorted(ops - set(MATRIX))
    assert not missing, (f"operations without an authorization rule: {missing}; add each to MATRIX in "
                         f"{__file__} with who may call it")
    stale = sorted(set(MATRIX) - ops)
    assert not stale, f"MATRIX names operations the API no longer has: {stale}"


def test_authorization_matrix(client: TestClient, cast: dict[str, Any]) -> None:
    wrong = []
    calls = 0
    for method, path, op in operations(client.app):
        access = MATRIX.get((method, path))
        if access is None:
            continue  # reported by test_every_operation_is_in_the_matrix
        answers: dict[str, int] = {}
        for caller in CALLERS:
            req = request_for(method, path, op, cast)
            headers = {**req.pop("headers", {}), **cast["headers"][caller]}
            r = client.request(**req, headers=headers)
            calls += 1
            answers[caller] = r.status_code
            want = expected(access, caller)
            ok = (r.status_code < 500 and (
                str(r.status_code) == want if want in ("401", "403") else
                r.status_code not in (401, 403) if want == "allowed" else True))
            if not ok:
                wrong.append(f"{method} {path} as {caller}: {r.status_code} (matrix: {want}) {r.text[:120]}")
            if want == "401" and r.status_code == 401:
                assert r.headers.get("www-authenticate") == "Bearer", (method, path, caller)
        if access == "public":  # credentials change nothing
            assert len(set(answers.values())) == 1, f"{method} {path}: {answers}"
    assert calls >= 40 * len(CALLERS)
    assert not wrong, "\n".join(wrong)


def test_a_device_token_never_reads_another_device(client: TestClient, two_devices: tuple[Dev, Dev]) -> None:
    a, b = two_devices
    for url in (f"/api/v1/devices/{b.id}/assignment", f"/api/v1/devices/{b.id}"):
        r = client.get(url, headers=a.auth)
        assert r.status_code == 403
        assert b.id not in r.text or "belongs to device" in r.text  # says whose token it is, leaks nothing


@pytest.mark.parametrize("what", ["device token", "api key"])
def test_revoked_credentials_stop_working_within_a_second_on_another_replica(
        client: TestClient, settings, keys: dict[str, str], store, what: str) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as replica:
        if what == "device token":
            dev = new_device(client, keys["operator"])
            url, headers = f"/api/v1/devices/{dev.id}/assignment", dev.auth
            revoke = ("DELETE", f"/api/v1/devices/{dev.id}", keys["operator"])
        else:
            key, secret = store.db.run(auth.create_api_key, name=f"short-{uuid.uuid4().hex[:6]}", role="viewer",
                                       actor="test")
            url, headers = "/api/v1/fleet/summary", bearer(secret)
            revoke = ("DELETE", f"/api/v1/apikeys/{key.id}", keys["admin"])
        for _ in range(3):  # cached on the replica
            assert replica.get(url, headers=headers).status_code == 200
        r = client.request(revoke[0], revoke[1], headers=bearer(revoke[2]))
        assert r.status_code == 200, r.text
        revoked_at = time.monotonic()
        assert client.get(url, headers=headers).status_code == 401  # the replica that revoked: at once
        while replica.get(url, headers=headers).status_code == 200:
            assert time.monotonic() - revoked_at < 1.0, f"the revoked {what} still works on the other replica"
            time.sleep(0.02)
        assert time.monotonic() - revoked_at < 1.0
        assert replica.get(url, headers=headers).status_code == 401
