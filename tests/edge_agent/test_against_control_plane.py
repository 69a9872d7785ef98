"""The agent against a real control plane on 127.0.0.1: enrollment, installs, telemetry and
sketches, refused versions, rollback, and an outage. (The kill -9 test is in test_crash.py.)"""

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.enroll import enroll
from qsae_shared.data import load_split
from qsae_shared.manifest import FileEntry, PolicyFloors
from tests.edge_agent.live import ROOT


class Clock:
    def __init__(self) -> None:
        import time

        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def new_agent(live, tmp_path, name, clock=None, **overrides):
    _, token = live.new_device(name)
    settings = load_settings(state_dir=tmp_path / name, server_url=live.url, telemetry_interval_s=10,
                             sketch_interval_s=10, sketch_min_inferences=1, backoff_base_s=1, backoff_max_s=4,
                             max_install_attempts=1, **overrides)
    enroll(settings, token)
    return Agent(settings, clock=clock or Clock())


@pytest.fixture(scope="module")
def base_version(live, kit):
    return live.publish(kit.good, kit.good_bytes)


@pytest.fixture(scope="module")
def images():
    split = load_split("test")
    return split.images[:1000], split.labels[:1000]


def test_cli_enroll_pins_the_server_key_and_status_reports(live, tmp_path, base_version):
    device_id, token = live.new_device("cli-device")
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "edge_agent.cli"]
    out = subprocess.run([*cli, "enroll", "--token", token, "--server", live.url, "--state-dir", str(state)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert device_id in out.stdout and live.store.signer.key_id in out.stdout
    again = subprocess.run([*cli, "enroll", "--token", token, "--server", live.url, "--state-dir", str(state),
                            "--force"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 1 and "enrollment token is unknown, already used" in again.stderr
    live.assign(device_id, base_version)
    agent = Agent(load_settings(state_dir=state))
    agent.tick()
    agent.close()
    st = subprocess.run([*cli, "status", "--state-dir", str(state), "--json"], capture_output=True, text=True,
                        cwd=ROOT)
    doc = json.loads(st.stdout)
    assert doc["device_id"] == device_id and doc["current"] == base_version
    assert doc["assignment"]["desired_version"] == base_version and doc["outbox"]["records"] == 0
    human = subprocess.run([*cli, "status", "--state-dir", str(state)], capture_output=True, text=True, cwd=ROOT)
    assert f"serving         {base_version}" in human.stdout


def test_installs_reports_telemetry_sketches_and_events(live, tmp_path, base_version, images):
    clock = Clock()
    agent = new_agent(live, tmp_path, "happy", clock)
    live.assign(agent.device_id, base_version)
    agent.tick()
    assert agent.runtime.version == base_version
    x, y = images
    p = agent.predict(x[:500])
    agent.feedback(p.ids[:200], y[:200])
    clock.t += 11
    agent.tick()
    (rec,) = live.telemetry(agent.device_id)
    assert rec.inference_count == 500 and rec.labelled_count == 200 and rec.deployed_version == base_version
    assert rec.labelled_correct == int((p.classes[:200] == y[:200]).sum())
    assert 0.3 < rec.estimated_accuracy <= 1 and rec.latency_p50_ms > 0
    detail = live.detail(agent.device_id)
    for _ in range(20):  # the sketch may go out on the next drain when the machine is busy
        if detail["sketches"]:
            break
        agent.tick()
        time.sleep(0.25)
        detail = live.detail(agent.device_id)
    assert [s["inference_count"] for s in detail["sketches"]] == [500]
    assert detail["sketches"][0]["size_bytes"] <= 256 * 1024
    assert [e["kind"] for e in live.events(agent.device_id)] == ["downloaded", "verified", "applied"]
    assert detail["device"]["deployed_version"] == base_version
    agent.close()


def test_long_poll_wakes_on_a_new_assignment(live, tmp_path, base_version, kit):
    import threading
    import time

    agent = new_agent(live, tmp_path, "long-poll", long_poll_s=20)
    agent.tick()  # no assignment yet: learns the ETag
    assert agent.assignment is not None and agent.assignment.desired_version is None
    threading.Timer(1.0, live.assign, args=(agent.device_id, base_version)).start()
    t0 = time.monotonic()
    agent.tick()
    waited = time.monotonic() - t0
    assert agent.runtime.version == base_version
    assert 0.8 < waited < 10, waited  # woke on the change, not after the full 20 s
    agent.close()


def _tampered_versions(live, kit, base_version):
    """Three ways a version can be wrong by the time it reaches the device; each is published
    properly, then damaged where the server keeps it."""
    from sqlalchemy import text

    cases = []
    # 1. a corrupted artifact: correctly hashed and signed, but not a model
    junk = b"QART\x01\x00" + bytes(range(256)) * 8
    m = replace(kit.good, version_id="v-corrupt", files=[
        FileEntry("model.qart", "model", len(junk), hashlib.sha256(junk).hexdigest())])
    cases.append((live.publish(m, junk), "does not verify"))
    # 2. a wrong sha256: the stored bytes change after signing (bit rot, tampering)
    data = bytearray(kit.good_bytes) + b"x"  # a distinct file
    m = replace(kit.good, version_id="v-wrongsha", files=[
        FileEntry("model.qart", "model", len(data), hashlib.sha256(bytes(data)).hexdigest())])
    vid = live.publish(m, bytes(data))
    path = live.store.artifact_path(m.files[0].sha256)
    path.chmod(0o644)
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    cases.append((vid, "sha256"))
    # 3. a bad signature: the manifest is edited in the database after signing
    vid = live.publish(replace(kit.good, version_id="v-badsig"), kit.good_bytes)
    doc = json.loads(live.store.db.run(lambda s: s.execute(
        text("SELECT manifest FROM model_versions WHERE id = :v"), {"v": vid}).scalar_one()))
    doc["floors"]["shadow_agreement_min"] = 0.0
    new = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    live.store.db.run(lambda s: s.execute(text("UPDATE model_versions SET manifest = :m, manifest_sha256 = :h "
                                               "WHERE id = :v"),
                                          {"m": new, "h": hashlib.sha256(new.encode()).hexdigest(), "v": vid}))
    cases.append((vid, "bad signature"))
    return cases


def test_bad_versions_are_rejected_while_the_old_model_keeps_serving(live, tmp_path, kit, base_version, images):
    clock = Clock()
    agent = new_agent(live, tmp_path, "refuser", clock)
    live.assign(agent.device_id, base_version)
    agent.tick()
    x, _ = images
    before = agent.predict(x[:100]).classes
    for version, reason in _tampered_versions(live, kit, base_version):
        live.assign(agent.device_id, version)
        clock.t += 2  # past the poll interval
        agent.tick()
        assert agent.runtime.version == base_version, version
        assert np.array_equal(agent.predict(x[:100]).classes, before)
        kinds = [e["kind"] for e in live.events(agent.device_id, version)]
        assert kinds[-1] == "rejected" and "applied" not in kinds, (version, kinds)
        assert reason in live.events(agent.device_id, version)[-1]["reason"]
    assert live.detail(agent.device_id)["device"]["deployed_version"] == base_version
    agent.close()


def test_regression_after_the_swap_rolls_back_and_the_server_sees_it(live, tmp_path, kit, base_version, images):
    clock = Clock()
    agent = new_agent(live, tmp_path, "rollback", clock)
    live.assign(agent.device_id, base_version)
    agent.tick()
    x, y = images
    p = agent.predict(x[:300])
    agent.feedback(p.ids, y[:300])
    agent.predict(x[300:600])  # recent inputs without labels yet
    bad = live.publish(replace(kit.bad, version_id="v-regresses",
                               floors=PolicyFloors(shadow_agreement_min=0.0, rollback_window=200)), kit.bad_bytes)
    live.assign(agent.device_id, bad)
    clock.t += 2
    agent.tick()
    assert agent.runtime.version == bad
    p = agent.predict(x[600:900])
    agent.feedback(p.ids, y[600:900])
    agent.tick()
    assert agent.runtime.version == base_version
    kinds = [e["kind"] for e in live.events(agent.device_id, bad)]
    assert kinds == ["downloaded", "verified", "applied", "rolled_back"]
    assert "labelled accuracy" in live.events(agent.device_id, bad)[-1]["reason"]
    agent.predict(x[:10])
    clock.t += 11
    agent.tick()
    assert [r.deployed_version for r in live.telemetry(agent.device_id)][-2:] == [bad, base_version]
    agent.close()
