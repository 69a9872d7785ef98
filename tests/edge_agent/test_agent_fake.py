"""The agent's loop against an in-process fake of the device API: installs, outbox order and
retries, refusals. (tests/edge_agent/test_against_control_plane.py runs the real server.)"""

import json
from dataclasses import replace

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.state import Credentials, save_credentials
from qsae_shared.data import load_split
from qsae_shared.manifest import FileEntry, PolicyFloors
from qsae_shared.signing import SigningKey
from tests.edge_agent.fake_server import FakeServer


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def make_agent(tmp_path, server, kit, clock=None, **overrides):
    settings = load_settings(state_dir=tmp_path / "state", telemetry_interval_s=10, sketch_interval_s=10,
                             sketch_min_inferences=1, backoff_base_s=1, backoff_max_s=8, **overrides)
    save_credentials(settings.state_dir, Credentials(
        device_id=server.device_id, device_token=server.token, server_url="http://fleet.test",
        signing_keys={kit.key.key_id: kit.key.public_key_b64}, base_model=kit.good.base_model, poll_interval_s=5,
        enrolled_at=0.0))
    return Agent(settings, transport=server.transport(), clock=clock or Clock())


def serve_version(server, manifest, data):
    server.serve(data)
    server.assign(manifest)


def serving_agent(tmp_path, kit, manifest, data, **overrides):
    """A fake server assigning `manifest`, and an agent that has synced with it once."""
    server = FakeServer()
    serve_version(server, manifest, data)
    clock = Clock()
    agent = make_agent(tmp_path, server, kit, clock, **overrides)
    agent.tick()
    return server, clock, agent


@pytest.fixture
def images():
    split = load_split("test")
    return split.images[:2000], split.labels[:2000]


def test_installs_the_assigned_model_and_reports(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    assert agent.runtime.version == "v-good"
    assert server.event_kinds("v-good") == ["downloaded", "verified", "applied"]
    x, y = images
    p = agent.predict(x[:300])
    agent.feedback(p.ids[:100], y[:100])
    clock.t += 11
    agent.tick()
    (rec,) = server.telemetry.values()
    assert rec["inference_count"] == 300 and rec["labelled_count"] == 100
    assert rec["deployed_version"] == "v-good" and rec["outbox_dropped"] == 0
    assert rec["labelled_correct"] == int((p.classes[:100] == y[:100]).sum())
    assert 0.3 < rec["estimated_accuracy"] <= 1
    (sketch,) = server.sketches.values()
    assert len(sketch) <= 256 * 1024
    assert len(agent.outbox) == 0
    # a restart serves the same model from disk, without downloading again
    agent.close()
    requests_before = len(server.requests)
    again = make_agent(tmp_path, server, kit, clock)
    assert again.runtime.version == "v-good"
    again.tick()
    assert not [r for r in server.requests[requests_before:] if "artifacts" in r]


def test_server_down_then_drains_in_order_and_seqs_never_repeat(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes, telemetry_batch=7)
    server.down = True
    x, _ = images
    for i in range(25):
        agent.predict(x[i * 10:(i + 1) * 10])
        clock.t += 11
        agent.tick()
    assert len(server.telemetry) == 0
    assert agent.status()["outbox"]["by_kind"]["telemetry"] == 25
    assert "ConnectError" in agent.status()["last_error"]
    # a restart in the middle does not lose or renumber anything
    agent.close()
    agent = make_agent(tmp_path, server, kit, clock, telemetry_batch=7)
    server.down = False
    for _ in range(3):
        clock.t += 20  # past any backoff (capped at 8 s)
        agent.tick()
    assert len(agent.outbox) == 0
    assert server.telemetry_order == sorted(server.telemetry_order) == list(range(len(server.telemetry)))
    assert [server.telemetry[s]["inference_count"] for s in range(25)] == [10] * 25
    assert all(server.telemetry[s]["inference_count"] == 0 for s in range(25, len(server.telemetry)))


def test_an_idle_device_still_reports_each_window_as_its_heartbeat(tmp_path, kit):
    server = FakeServer()
    serve_version(server, kit.good, kit.good_bytes)
    clock = Clock()
    agent = make_agent(tmp_path, server, kit, clock)
    for _ in range(3):
        clock.t += 11
        agent.tick()
    records = [server.telemetry[s] for s in server.telemetry_order]
    assert len(records) == 3 and all(r["inference_count"] == 0 for r in records)
    assert records[-1]["deployed_version"] == "v-good" and records[-1]["estimated_accuracy"] is None
    assert records[1]["window_start"] == records[0]["window_end"]


def test_backoff_grows_is_capped_honours_retry_after_and_resets(tmp_path, kit):
    server = FakeServer()
    clock = Clock()
    agent = make_agent(tmp_path, server, kit, clock)
    server.down = True
    gaps = []
    for _ in range(8):
        agent.tick()
        gaps.append(agent._net_ready_at - clock.t)
        clock.t = agent._net_ready_at
    assert gaps[0] <= 1 and max(gaps) <= 8 and gaps[-1] >= 4
    server.down = False
    server.fail_with = [(429, {"Retry-After": "30"})]
    agent.tick()
    assert agent._net_ready_at - clock.t >= 30
    clock.t = agent._net_ready_at
    agent.tick()
    assert agent.last_error is None and agent.backoff.attempt == 0
    server.fail_with = [(503, {})]
    agent.tick()
    assert agent._net_ready_at - clock.t <= 1  # reset after the success


def test_a_record_refused_for_good_is_dropped_with_its_reason(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    x, _ = images
    agent.predict(x[:10])
    clock.t += 11
    agent.flush()
    agent.predict(x[10:20])
    clock.t += 11
    agent.flush()
    server.fail_with = [(422, {}), (422, {})]  # the batch, then the first record alone
    agent.drain()
    status = agent.status()
    assert status["rejected_records"]["total"] == 1
    assert status["rejected_records"]["recent"][0]["reason"] == "injected 422"
    assert len(agent.outbox) == 0 and len(server.telemetry) == 1


def _bad_versions(kit):
    """(name, manifest, bytes the server serves) for three ways a download can be wrong."""
    good_sha = kit.good.files[0].sha256
    # 1. the served file is damaged in transit or at rest: its sha256 no longer matches
    corrupted = bytearray(kit.good_bytes)
    corrupted[len(corrupted) // 2] ^= 0xFF
    m1 = kit.key.sign_manifest(replace(kit.good, version_id="v-corrupt"))
    # 2. a signed manifest whose sha256 names a different file than the one served under it
    other = SigningKey.generate()
    m2 = kit.key.sign_manifest(replace(kit.good, version_id="v-wrongsha",
                                       files=[FileEntry("model.qart", "model", len(kit.good_bytes), "ab" * 32)]))
    # 3. signed by a key the device never pinned
    m3 = other.sign_manifest(replace(kit.good, version_id="v-badsig"))
    # 4. signature that does not match the manifest's content
    m4 = replace(kit.key.sign_manifest(replace(kit.good, version_id="v-tampered")), base_version="2")
    # 5. a well-signed, correctly hashed file that is not a model
    junk = b"QART\x01\x00" + b"\x00" * 100
    import hashlib
    m5 = kit.key.sign_manifest(replace(kit.good, version_id="v-junk", files=[
        FileEntry("model.qart", "model", len(junk), hashlib.sha256(junk).hexdigest())]))
    return [("corrupted", m1, {good_sha: bytes(corrupted)}, "sha256"),
            ("wrong sha256", m2, {"ab" * 32: kit.good_bytes}, "sha256"),
            ("unknown key", m3, {}, "unknown key"),
            ("bad signature", m4, {}, "bad signature"),
            ("not a model", m5, {hashlib.sha256(junk).hexdigest(): junk}, "does not verify")]


@pytest.mark.parametrize("case", range(5))
def test_bad_versions_are_rejected_while_the_old_model_serves(tmp_path, kit, images, case):
    name, manifest, files, reason = _bad_versions(kit)[case]
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes, max_install_attempts=2)
    x, _ = images
    before = agent.predict(x[:50]).classes
    server.artifacts.update(files)
    server.assign(manifest)
    for _ in range(4):
        clock.t += 700  # past the install backoff
        agent.tick()
    assert agent.runtime.version == "v-good", name
    assert (agent.predict(x[:50]).classes == before).all()
    kinds = server.event_kinds(manifest.version_id)
    assert kinds[-1] == "rejected" and kinds.count("rejected") == 1, (name, kinds)
    assert "applied" not in kinds
    last = [server.events[u] for u in server.event_order if server.events[u]["kind"] == "rejected"][-1]
    assert reason in last["reason"], last["reason"]
    assert agent.status()["blocked"][manifest.version_id]["final"]
    assert manifest.version_id not in agent.status()["installed"]


def test_the_base_model_is_installed_even_when_the_serving_version_disagrees_with_it(tmp_path, kit, images):
    # serving a version built for data the device no longer sees
    server, clock, agent = serving_agent(tmp_path, kit, kit.bad, kit.bad_bytes)
    agent.predict(images[0][:300])
    serve_version(server, kit.good, kit.good_bytes)  # the base model: the reference every version is judged by
    clock.t += 6
    agent.tick()
    assert agent.runtime.version == "v-good"
    assert "rejected" not in server.event_kinds("v-good")


def test_shadow_evaluation_refuses_a_model_that_disagrees(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    agent.predict(images[0][:300])  # recent inputs on the device
    serve_version(server, kit.bad, kit.bad_bytes)  # default floor: 0.9 agreement
    clock.t += 6  # the next assignment poll
    agent.tick()
    assert agent.runtime.version == "v-good"
    (event,) = [server.events[u] for u in server.event_order if server.events[u]["version_id"] == "v-bad"
                and server.events[u]["kind"] == "rejected"]
    assert "shadow evaluation: agreement" in event["reason"]


def install_wrong_twin_past_its_floor(server, clock, agent, kit, rollback_window):
    """Serve v-bad (confidently wrong) with an agreement floor of 0 and let the agent install it."""
    floors = PolicyFloors(shadow_agreement_min=0.0, rollback_window=rollback_window)
    serve_version(server, kit.key.sign_manifest(replace(kit.bad, floors=floors)), kit.bad_bytes)
    clock.t += 6  # the next assignment poll
    agent.tick()
    assert agent.runtime.version == "v-bad"


def test_shadow_evaluation_judges_agreement_against_the_base_not_a_stale_version(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)  # the base: the reference
    x, _ = images
    # A version that serves now but disagrees with the base on these inputs (as one pruned for data
    # the device no longer sees would); no probation verdict yet.
    install_wrong_twin_past_its_floor(server, clock, agent, kit, rollback_window=10_000)
    agent.predict(x[:300])  # recent inputs
    # The next version, re-pruned for the data the device sees: the base's answers, default floor.
    fresh = kit.key.sign_manifest(replace(kit.good, version_id="v-fresh",
                                          method={**kit.good.method, "reference": False}))
    serve_version(server, fresh, kit.good_bytes)
    clock.t += 6
    agent.tick()
    assert agent.runtime.version == "v-fresh", server.event_kinds("v-fresh")
    assert "applied" in server.event_kinds("v-fresh")
    assert "v-good" in agent.store.installed()  # the reference stays on disk for the next evaluation


def test_regression_after_the_swap_rolls_back(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    x, y = images
    p = agent.predict(x[:400])
    agent.feedback(p.ids, y[:400])
    agent.predict(x[1000:1300])  # the recent inputs held for shadow evaluation have no labels yet
    # a version whose policy lets it through shadow evaluation, then turns out wrong on labels
    install_wrong_twin_past_its_floor(server, clock, agent, kit, rollback_window=200)
    assert agent.status()["probation"]["previous"] == "v-good"
    p = agent.predict(x[400:700])
    agent.feedback(p.ids, y[400:700])
    agent.tick()
    assert agent.runtime.version == "v-good"
    assert server.event_kinds("v-bad") == ["downloaded", "verified", "applied", "rolled_back"]
    event = server.events[server.event_order[-1]]
    assert "labelled accuracy" in event["reason"]
    assert (agent.predict(x[:50]).classes == agent.predict(x[:50]).classes).all()
    # the same version is not installed again while the server still assigns it
    clock.t += 100
    agent.tick()
    assert agent.runtime.version == "v-good"
    assert server.event_kinds("v-bad").count("applied") == 1
    # telemetry records each carry one version
    clock.t += 11
    agent.tick()
    versions = [r["deployed_version"] for r in server.telemetry.values()]
    assert "v-bad" in versions and versions[-1] == "v-good"


def put_twin_on_probation(server, clock, agent, kit, **changes):
    """Serve v-good-2 (v-good's bytes, its manifest with `changes`) and let the agent install it."""
    twin = kit.key.sign_manifest(replace(kit.good, version_id="v-good-2", floors=PolicyFloors(rollback_window=200),
                                         **changes))
    serve_version(server, twin, kit.good_bytes)
    clock.t += 6
    agent.tick()
    assert agent.status()["probation"]["version"] == "v-good-2"


def test_a_model_that_passes_probation_becomes_last_known_good(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    x, _ = images
    agent.predict(x[:300])
    put_twin_on_probation(server, clock, agent, kit)
    agent.predict(x[300:600])
    agent.tick()
    status = agent.status()
    assert status["current"] == status["last_known_good"] == "v-good-2" and status["probation"] is None
    assert status["installed"] == ["v-good-2"]


def test_data_that_changes_during_probation_is_not_blamed_on_the_new_version(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    x, y = images
    p = agent.predict(x[:400])
    agent.feedback(p.ids, y[:400])  # the baseline: labelled accuracy of v-good on the old data
    put_twin_on_probation(server, clock, agent, kit)
    p = agent.predict(x[400:700])
    agent.feedback(p.ids, np.roll(y[400:700], 1))  # the world changed: the old answers are now wrong
    agent.tick()
    status = agent.status()
    assert status["current"] == status["last_known_good"] == "v-good-2", status
    assert "rolled_back" not in server.event_kinds("v-good-2")


def test_a_version_with_the_same_answers_and_a_gloomier_profile_is_not_rolled_back(tmp_path, kit, images):
    """Where two versions predict the same class they are equally right, whatever their profiles
    estimate: only their disagreements can make one less accurate than the other."""
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    x, _ = images
    agent.predict(x[:300])
    profile = kit.good.confidence_profile
    gloomy = replace(profile, accuracy=[max(0.0, a - 0.2) for a in profile.accuracy])
    put_twin_on_probation(server, clock, agent, kit, confidence_profile=gloomy)
    agent.predict(x[300:600])
    assert agent.runtime.stats("v-good-2").estimated < agent.runtime.stats("v-good").estimated - 0.1
    agent.tick()
    status = agent.status()
    assert status["current"] == status["last_known_good"] == "v-good-2", status
    assert "rolled_back" not in server.event_kinds("v-good-2")


def test_events_and_records_are_json_scalars_only(tmp_path, kit, images):
    server, clock, agent = serving_agent(tmp_path, kit, kit.good, kit.good_bytes)
    agent.predict(images[0][:100])
    clock.t += 11
    agent.tick()
    for doc in [*server.telemetry.values(), *server.events.values()]:
        assert all(v is None or isinstance(v, (str, int, float)) for v in doc.values()), doc
    assert np.isfinite(json.loads(json.dumps(list(server.telemetry.values())))[0]["latency_p95_ms"])


def test_background_agent_serves_and_flushes_on_exit(tmp_path, kit, images):
    import time

    from edge_agent.agent import BackgroundAgent

    server = FakeServer()
    serve_version(server, kit.good, kit.good_bytes)
    settings = load_settings(state_dir=tmp_path / "state", telemetry_interval_s=3600, sketch_interval_s=3600)
    save_credentials(settings.state_dir, Credentials(
        device_id=server.device_id, device_token=server.token, server_url="http://fleet.test",
        signing_keys={kit.key.key_id: kit.key.public_key_b64}, base_model=kit.good.base_model, poll_interval_s=5,
        enrolled_at=0.0))
    with BackgroundAgent(Agent(settings, transport=server.transport()), tick_s=0.05) as agent:
        deadline = time.monotonic() + 20
        while agent.runtime.version is None and time.monotonic() < deadline:
            time.sleep(0.05)
        agent.predict(images[0][:64])
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 2  # stopping does not wait out an interval
    (rec,) = server.telemetry.values()  # the open window was stored and sent on the way out
    assert rec["inference_count"] == 64
    assert len(server.sketches) == 1
