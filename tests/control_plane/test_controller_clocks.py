"""The controller compares times from one clock at a time: a device whose clock is off still has its
rollback counted by a rollout, and its interval trigger runs on the server's time."""

from __future__ import annotations

import time
import uuid

from control_plane.controller.loop import Controller, ControllerConfig
from control_plane.controller.rollouts import Action
from tests.control_plane.cp_helpers import make_device, make_sketch, make_version

HOUR = 3600.0


def _post_events(client, device, *events: tuple[str, str, float]) -> None:
    body = {"events": [{"uuid": str(uuid.uuid4()), "kind": kind, "version_id": version, "reason": "test",
                        "at": at} for kind, version, at in events]}
    r = client.post(f"/api/v1/devices/{device.id}/events", headers=device.auth, json=body)
    assert r.status_code == 200, r.text


def test_a_rollout_counts_the_rollback_of_a_device_whose_clock_is_an_hour_behind(client, keys, store):
    cohort = f"plant-{uuid.uuid4().hex[:8]}"
    device = make_device(client, keys, labels={"cohort": cohort})
    version = make_version(store, "v-fleet-2", None)
    rollout = store.create_rollout(version, cohort, stages=(1.0, 1.0), thresholds={"max_failures": 1})
    assert store.rollout_device_ids(rollout.id) == [device.id]
    _post_events(client, device, ("rolled_back", version, time.time() - HOUR))
    assert Controller(store).check_rollout(rollout) is Action.ABORT


def test_a_rollout_ignores_what_happened_to_the_version_before_it_began(client, keys, store):
    cohort = f"plant-{uuid.uuid4().hex[:8]}"
    device = make_device(client, keys, labels={"cohort": cohort})
    version = make_version(store, "v-fleet-3", None)
    _post_events(client, device, ("rolled_back", version, time.time()))  # an earlier, manual try
    time.sleep(0.01)
    rollout = store.create_rollout(version, cohort, stages=(1.0, 1.0), thresholds={"max_failures": 1})
    assert Controller(store).check_rollout(rollout) is Action.WAIT  # nothing reported since


def test_the_interval_trigger_runs_on_the_servers_clock(client, keys, store):
    device = make_device(client, keys)
    version = make_version(store, "v-own-1", device.id)
    store.set_desired_version(device.id, version, actor="test", reason="test")
    # The device's clock is a day ahead: by its own times the version was applied "tomorrow".
    _post_events(client, device, ("applied", version, time.time() + 24 * HOUR))
    r = client.post(f"/api/v1/devices/{device.id}/sketches", content=make_sketch(device.id, seq=1),
                    headers={**device.auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    controller = Controller(store, ControllerConfig(min_fresh_samples=1))
    device_now = store.get_device(device.id)
    assert device_now.deployed_version == version
    assert controller.check_device(device_now, now=time.time() + HOUR) == []  # not due yet
    reasons = controller.check_device(device_now, now=time.time() + 25 * HOUR)  # the interval is 24 h
    assert any(reason.startswith("interval") for reason in reasons), reasons
