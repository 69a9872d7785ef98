"""Crash and outage: kill -9 in the middle of an upload, and a control plane that goes away."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks.faults.proxy import CutProxy
from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.enroll import enroll
from qsae_shared.data import load_split
from qsae_shared.sketch import parse_sketch
from tests.edge_agent.live import BASE_MODEL, ROOT, LiveControlPlane


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _fill_outbox(agent, clock, windows):
    """`windows` telemetry records and sketches in the outbox, made the real way."""
    x = load_split("test").images
    for i in range(windows):
        agent.predict(x[i * 20:(i + 1) * 20])
        clock.t += 11
        agent.flush()
    records = [r for r in agent.outbox.pending() if r.kind == "telemetry"]
    return [json.loads(r.read())["uuid"] for r in records], len(agent.outbox.pending())


def test_kill_9_in_the_middle_of_an_upload_loses_and_duplicates_nothing(live, kit, tmp_path):
    version = live.publish(kit.good, kit.good_bytes)
    device_id, token = live.new_device("crasher")
    proxy = CutProxy(live.port)
    state = tmp_path / "agent"
    settings = load_settings(state_dir=state, server_url=proxy.url, telemetry_interval_s=10, sketch_interval_s=10,
                             sketch_min_inferences=1, telemetry_batch=5, request_timeout_s=60)
    enroll(settings, token)
    live.assign(device_id, version)
    clock = Clock()
    agent = Agent(settings, clock=clock)
    agent.tick()  # installs the model; sends the install events
    assert agent.runtime.version == version and len(agent.outbox) == 0
    expected, total = _fill_outbox(agent, clock, 40)
    agent.close()
    assert len(expected) == 40 and total == 80  # 40 telemetry records, 40 sketches

    # The daemon drains through the proxy; after a few answers the proxy swallows them, so the
    # agent waits on an upload the server has already stored. Then: kill -9.
    script = textwrap.dedent(f"""
        from edge_agent.agent import Agent
        from edge_agent.config import load_settings
        agent = Agent(load_settings(state_dir={str(state)!r}, server_url={proxy.url!r}, telemetry_batch=5,
                                    request_timeout_s=60))
        print("draining", flush=True)
        agent.drain(max_requests=1000)
        print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "draining"
    deadline = time.monotonic() + 30
    while len(live.telemetry(device_id)) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.hold_answers()
    proxy.wait_withheld(max(0.0, deadline - time.monotonic()))
    time.sleep(0.3)
    assert proc.poll() is None, "the agent finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proxy.close()
    stored_at_kill = {r.uuid for r in live.telemetry(device_id)}
    stored_at_kill |= {f"sketch-{parse_sketch(b).seq}" for b in live.store.device_sketches(device_id, BASE_MODEL)}
    pending_at_kill = agent_outbox_ids(state)
    assert 0 < len(stored_at_kill) < 80
    # the upload in flight was stored by the server, but its record is still in the outbox
    assert stored_at_kill & pending_at_kill, "the kill did not land between the server's commit and the ack"

    # restart, straight to the server
    again = Agent(load_settings(state_dir=state, server_url=live.url, telemetry_batch=5))
    again.drain(max_requests=1000)
    assert len(again.outbox) == 0
    again.close()
    uuids = [r.uuid for r in live.telemetry(device_id)]
    assert len(uuids) == len(set(uuids)) == 40  # nothing duplicated
    assert set(uuids) == set(expected)  # nothing lost
    assert len(live.detail(device_id)["sketches"]) == 20  # the detail shows the newest 20
    assert len(live.store.device_sketches(device_id, BASE_MODEL)) == 40


def agent_outbox_ids(state):
    """Telemetry UUIDs and sketch seqs still in the outbox."""
    from edge_agent.outbox import Outbox

    pending = Outbox(state / "outbox").pending()
    return ({json.loads(r.read())["uuid"] for r in pending if r.kind == "telemetry"}
            | {f"sketch-{parse_sketch(r.read()).seq}" for r in pending if r.kind == "sketch"})


@pytest.fixture
def own_server(tmp_path):
    server = LiveControlPlane(tmp_path / "cp")
    (tmp_path / "cp").mkdir()
    server.start()
    yield server
    server.close()


def test_server_down_the_outbox_fills_then_drains_in_order(own_server, kit, tmp_path):
    live = own_server
    version = live.publish(kit.good, kit.good_bytes)
    device_id, token = live.new_device("outage")
    settings = load_settings(state_dir=tmp_path / "agent", server_url=live.url, telemetry_interval_s=10,
                             sketch_interval_s=1e9, telemetry_batch=7, backoff_base_s=1, backoff_max_s=4)
    enroll(settings, token)
    live.assign(device_id, version)
    clock = Clock()
    agent = Agent(settings, clock=clock)
    agent.tick()
    x = load_split("test").images
    live.stop()
    for i in range(30):  # the application keeps classifying while the server is away
        agent.predict(x[i * 10:(i + 1) * 10 + i])
        clock.t += 11
        agent.tick()
    assert len(agent.outbox) == 30
    assert "ConnectError" in agent.status()["last_error"]
    live.start()
    for _ in range(3):
        clock.t += 11
        agent.tick()
    assert len(agent.outbox) == 0 and agent.status()["last_error"] is None
    rows = live.telemetry(device_id)
    assert [r.seq for r in rows] == list(range(len(rows)))
    assert [r.inference_count for r in rows[:30]] == [10 + i for i in range(30)]
    assert all(r.inference_count == 0 for r in rows[30:])  # heartbeats of the idle windows since
    received = [r.received_at for r in rows]
    assert received == sorted(received)  # stored in the order they were made
    agent.close()
