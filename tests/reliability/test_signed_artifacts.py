"""Signed artifacts end to end: a real agent against a real control plane (`qsae-fleet serve`)
refuses a manifest signed by an unknown key, a manifest whose signature does not verify and a file
whose sha256 does not match, and keeps serving the model it has; it follows a signing-key rotation
announced with the current key, and refuses a forged one."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from control_plane.keyring import rotate_signing_key
from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.enroll import enroll
from edge_agent.state import load_credentials
from qsae_shared.data import load_split
from qsae_shared.keyrotation import MANIFEST_EXTRA_KEY, announce
from qsae_shared.manifest import Manifest
from qsae_shared.signing import SigningKey
from tests.reliability.conftest import live_env
from tests.reliability.helpers import bearer

ADMIN = f"qk_signed_{uuid.uuid4().hex}"
BASE = "tiny-cnn"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _export(seed: int) -> tuple[Manifest, bytes]:
    """The real exporter's dense int8 artifact of a small (untrained) CNN: enough to install and run."""
    import torch

    from workers import nets
    from workers.nets import TINY_CNN as TINY_SPEC
    from workers.retrain import export_base
    from workers.training import Checkpoint, quantize_stem

    torch.manual_seed(seed)
    net = nets.build(TINY_SPEC)
    quantize_stem(net, TINY_SPEC)
    ck = Checkpoint(spec=TINY_SPEC, state={k: v.clone() for k, v in net.state_dict().items()}, config={},
                    metrics={}, base_version=f"untrained-{seed}", seconds=0.0)
    result = export_base(ck)
    (data,) = result.files.values()
    return result.manifest, data


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Manifest, bytes]]:
    return {"a": _export(0), "b": _export(1)}


@pytest.fixture(scope="module")
def server(settings, live_factory):
    return live_factory(live_env(settings, ADMIN))


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=10, headers=bearer(ADMIN)) as c:
        yield c


def publish(store, manifest: Manifest, data: bytes, version_id: str) -> str:
    """Store the file and register the version unsigned: the server signs it with its current key."""
    store.put_artifact(data)
    return store.register_model_version(replace(manifest, version_id=version_id, key_id="", signature=""),
                                        status="approved").id


def overwrite_manifest(store, version_id: str, manifest_json: str) -> None:
    """What an attacker with database access (or a broken replica) would serve."""
    store.db.run(lambda s: s.execute(text("UPDATE model_versions SET manifest = :m, manifest_sha256 = :h WHERE id = :v"),
                                     {"m": manifest_json, "h": hashlib.sha256(manifest_json.encode()).hexdigest(),
                                      "v": version_id}))


def new_agent(http: httpx.Client, server, tmp_path: Path, clock: Clock) -> Agent:
    r = http.post("/api/v1/devices", json={"name": f"signed-{uuid.uuid4().hex[:8]}", "labels": {}, "base_model": BASE})
    assert r.status_code == 201, r.text
    settings = load_settings(state_dir=tmp_path / r.json()["device_id"], server_url=server.url,
                             telemetry_interval_s=10, sketch_interval_s=10, sketch_min_inferences=1,
                             max_install_attempts=1, backoff_base_s=0.1, backoff_max_s=0.5, poll_interval_s=1)
    enroll(settings, r.json()["enrollment_token"])
    return Agent(settings, clock=clock)


def settle(agent: Agent, clock: Clock, turns: int = 4) -> None:
    for _ in range(turns):
        clock.t += 2
        agent.tick()


def events(http: httpx.Client, device_id: str, version_id: str) -> list[dict]:
    r = http.get(f"/api/v1/devices/{device_id}")
    assert r.status_code == 200
    return [e for e in r.json()["events"] if e["version_id"] == version_id]


def serves(agent: Agent, version: str) -> bool:
    x = load_split("test").images[:32]
    return agent.runtime.version == version and agent.predict(x).classes.shape == (32,)


def test_bad_signatures_and_files_are_refused_and_the_old_model_keeps_serving(
        store, server, http, models, tmp_path) -> None:
    (m_a, data_a), (m_b, data_b) = models["a"], models["b"]
    clock = Clock()
    agent = new_agent(http, server, tmp_path, clock)
    good = publish(store, m_a, data_a, f"good-{uuid.uuid4().hex[:6]}")
    store.set_desired_version(agent.device_id, good, reason="test")
    settle(agent, clock)
    assert serves(agent, good)

    cases = {}
    # 1. signed by a key the device never pinned (a valid signature, by the wrong key)
    vid = publish(store, m_a, data_a, f"unknown-key-{uuid.uuid4().hex[:6]}")
    foreign = SigningKey.generate().sign_manifest(store.version_manifest(vid))
    overwrite_manifest(store, vid, foreign.to_json().decode())
    cases[vid] = "unknown key"
    # 2. the server's key, but the manifest changed after signing (claims a better compression)
    vid = publish(store, m_a, data_a, f"bad-sig-{uuid.uuid4().hex[:6]}")
    doc = json.loads(store.version_manifest(vid).to_json())
    doc["metrics"]["compression_ratio"] = 99.0
    overwrite_manifest(store, vid, json.dumps(doc))
    cases[vid] = "bad signature"
    # 3. a correctly signed manifest whose file was altered at rest (same size, one byte flipped)
    vid = publish(store, m_b, data_b, f"bad-sha-{uuid.uuid4().hex[:6]}")
    path = store.artifact_path(m_b.files[0].sha256)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    cases[vid] = "sha256"

    for vid, reason in cases.items():
        store.set_desired_version(agent.device_id, vid, reason="test")
        settle(agent, clock)
        assert serves(agent, good), f"{vid}: the device stopped serving {good}"
        kinds = [e["kind"] for e in events(http, agent.device_id, vid)]
        assert "rejected" in kinds and "applied" not in kinds, (vid, kinds)
        rejected = next(e for e in events(http, agent.device_id, vid) if e["kind"] == "rejected")
        assert reason in rejected["reason"], rejected["reason"]
        assert agent.status()["blocked"][vid]["final"] is True
    assert sorted(load_credentials(agent.state_dir).signing_keys) == sorted(store.signing_public_keys())
    agent.close()


def test_key_rotation_is_followed_and_a_forged_rotation_is_not(store, settings, server, http, models,
                                                               tmp_path) -> None:
    m_a, data_a = models["a"]
    clock = Clock()
    agent = new_agent(http, server, tmp_path, clock)
    k1 = store.signer.key_id
    assert set(agent.creds.signing_keys) == {k1}
    first = publish(store, m_a, data_a, f"before-{uuid.uuid4().hex[:6]}")
    store.set_desired_version(agent.device_id, first, reason="test")
    settle(agent, clock)
    assert serves(agent, first)

    # The operator rotates the key: the new one is announced with the old one.
    ann = rotate_signing_key(settings.signing_key_file)
    k2 = ann.new_key_id
    rotated = publish(store, m_a, data_a, f"after-{uuid.uuid4().hex[:6]}")
    manifest = store.version_manifest(rotated)
    assert manifest.key_id == k2 and manifest.extra[MANIFEST_EXTRA_KEY][0]["signed_by"] == k1
    store.set_desired_version(agent.device_id, rotated, reason="test")
    settle(agent, clock)
    assert serves(agent, rotated)
    assert set(load_credentials(agent.state_dir).signing_keys) == {k1, k2}  # pinned, on disk

    # A device enrolling now pins both keys (versions signed before the rotation still verify).
    fresh = http.post("/api/v1/devices", json={"name": f"late-{uuid.uuid4().hex[:6]}", "base_model": BASE})
    keys = httpx.post(f"{server.url}/api/v1/enroll", json={"enrollment_token": fresh.json()["enrollment_token"],
                                                           "agent_version": "t"}).json()["signing_keys"]
    assert set(keys) == {k1, k2}

    # A forged rotation: the attacker's key "announced" as if by k1, but signed by the attacker.
    evil = SigningKey.generate()
    forged = replace(announce(evil, evil.public_key_b64, issued_at=time.time()), signed_by=k1)
    evil_manifest = evil.sign_manifest(replace(manifest, version_id=f"forged-{uuid.uuid4().hex[:6]}",
                                               extra={**manifest.extra, MANIFEST_EXTRA_KEY: [forged.to_dict()]}))
    vid = publish(store, m_a, data_a, evil_manifest.version_id)
    overwrite_manifest(store, vid, evil_manifest.to_json().decode())
    store.set_desired_version(agent.device_id, vid, reason="test")
    settle(agent, clock)
    assert serves(agent, rotated)
    rejected = [e for e in events(http, agent.device_id, vid) if e["kind"] == "rejected"]
    assert rejected and "unknown key" in rejected[0]["reason"]
    assert evil.key_id not in load_credentials(agent.state_dir).signing_keys

    # Retiring: the next rotation drops k2 from every follower (and from enrollment).
    ann3 = rotate_signing_key(settings.signing_key_file, retire_previous=True)
    k3 = ann3.new_key_id
    third = publish(store, m_a, data_a, f"retired-{uuid.uuid4().hex[:6]}")
    store.set_desired_version(agent.device_id, third, reason="test")
    settle(agent, clock)
    assert serves(agent, third)
    assert set(load_credentials(agent.state_dir).signing_keys) == {k1, k3}
    assert set(store.signing_public_keys()) == {k1, k3}
    agent.close()


def test_the_agent_keeps_its_model_across_a_restart_after_a_rotation(store, settings, server, http, models,
                                                                     tmp_path) -> None:
    m_a, data_a = models["a"]
    clock = Clock()
    agent = new_agent(http, server, tmp_path, clock)
    rotate_signing_key(settings.signing_key_file)
    vid = publish(store, m_a, data_a, f"restart-{uuid.uuid4().hex[:6]}")
    store.set_desired_version(agent.device_id, vid, reason="test")
    settle(agent, clock)
    assert serves(agent, vid)
    agent.close()
    again = Agent(agent.settings, clock=clock)  # a reboot: the pinned keys and the model come back
    assert serves(again, vid)
    assert store.signer.key_id in again.creds.signing_keys
    x = np.asarray(load_split("test").images[:8])
    assert again.predict(x).version == vid
    again.close()
