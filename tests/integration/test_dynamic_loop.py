"""The whole loop with every real part: PostgreSQL, Redis, an `mlflow server` process, a local
Ray, the control plane over HTTP, the dispatcher and the controller, and enrolled agents on a tiny
model. A drift makes the controller enqueue a retrain, the dispatcher registers a version in MLflow
with the device's alias, and the agent installs it; a canary rollout whose devices regress is
aborted and the devices go back."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from control_plane.controller.loop import Controller, ControllerConfig
from control_plane.services import FleetStore
from control_plane.services.events import list_events
from control_plane.settings import Settings
from edge_agent.simulator import SimClock, SimulationConfig, assign_version, build_agents
from qsae_shared.distributions import profiles_from_scenario
from qsae_shared.manifest import PolicyFloors
from qsae_shared.sketch import parse_sketch
from tests.scratch_db import scratch_postgres
from tests.tiny_model import tiny_checkpoint
from workers.demo import _Server, free_port, wait_healthy
from workers.dispatcher import Dispatcher, DispatcherConfig, init_ray
from workers.tracking import Tracker, alias_for_device

ADMIN = "qk_it_" + uuid.uuid4().hex
FOOTWEAR, BAGS = ["sandal", "sneaker", "ankle-boot"], ["trouser", "dress", "bag"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(f"{url}/health", 120, step_s=0.5, alive=lambda: proc.poll() is None):
            assert proc.poll() is None, "mlflow server exited"
            pytest.fail("mlflow server did not answer /health within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with scratch_postgres("qsae_it") as url:
        yield url


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, mlflow_server, pg_database):
    state = tmp_path_factory.mktemp("fleet")
    prefix = f"qsae-it-{uuid.uuid4().hex[:8]}:"
    settings = Settings(state_dir=state, database_url=pg_database, redis_url="redis://127.0.0.1:6379/0",
                        redis_prefix=prefix, mlflow_tracking_uri=mlflow_server, bootstrap_admin_key=ADMIN,
                        port=free_port(), calibration_size=240,
                        rate_limit_per_minute=1_000_000)
    ck = tiny_checkpoint()
    init_ray(None, num_cpus=2)
    server = _Server(settings)
    server.start()
    store = FleetStore(settings)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    policy = httpx.get(f"{server.url}/api/v1/policies/default", headers=headers).json()
    policy = {k: v for k, v in policy.items() if k not in ("name", "updated_at")}
    policy.update(kl_budget=0.004, min_compression=1.5, drift_threshold=0.006, accuracy_drop_pp=50,
                  extra={"debounce_s": 1.0, "shadow_agreement_min": 0.8})  # a tiny model flips more
    httpx.put(f"{server.url}/api/v1/policies/default", headers=headers, json=policy).raise_for_status()
    stop = threading.Event()
    tracker = Tracker(mlflow_server)
    dispatcher = Dispatcher(store, tracker, DispatcherConfig(max_parallel=2, poll_s=0.5), checkpoint=ck)
    controller = Controller(store, ControllerConfig(tick_s=0.5, min_inferences=128, min_fresh_samples=200,
                                                    debounce_s=1.0))
    threads = [threading.Thread(target=dispatcher.run, args=(stop,), daemon=True),
               threading.Thread(target=controller.run, args=(stop,), daemon=True)]
    for t in threads:
        t.start()
    base_job, _ = store.enqueue_job(None, "train_base", "base:tiny", "test")
    deadline = time.monotonic() + 180
    while store.get_job(base_job.id).status != "succeeded":
        assert time.monotonic() < deadline, store.get_job(base_job.id)
        time.sleep(0.5)
    yield {"settings": settings, "store": store, "url": server.url, "tracker": tracker, "ck": ck,
           "base": store.get_job(base_job.id).version_id, "state": state}
    stop.set()
    for t in threads:
        t.join(timeout=30)
    server.stop()
    import redis

    r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for key in r.scan_iter(f"{prefix}*"):
        r.delete(key)
    store.close()


def agents(fleet, scenario, name):
    cfg = SimulationConfig(batch_size=32, label_rate=0.5, label_delay_s=2, telemetry_interval_s=2,
                           sketch_interval_s=4, base_model="tiny-cnn", name_prefix=f"{name}-")
    clock = SimClock(time.time())
    sims = build_agents(profiles_from_scenario(scenario), cfg, fleet["url"], fleet["state"] / name, ADMIN, clock)
    for s in sims:
        assign_version(fleet["url"], ADMIN, s.agent.device_id, fleet["base"])
    return sims, clock


def history(store, device_id):
    """What a failed wait shows: the device's jobs and its newest events."""
    jobs = [(j.id, j.status, j.trigger_reason, (j.result or {}).get("decision"), j.error)
            for j in store.list_jobs(device_id=device_id)]
    events = store.db.run(lambda s: [(e.kind, e.version_id, e.reason) for e in list_events(s, device_id, 20)])
    return {"jobs": jobs, "events": events}


def run_until(sims, clock, condition, timeout_s, until_t=None):
    """Step the agents (one batch each, one simulated second) until `condition()` or time out.
    With `until_t`, a device stops classifying at that point of its stream (it only syncs), so a
    phase does not run out while the server is still working for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        for s in sims:
            room = until_t is None or s.stream.t + s.cfg.batch_size <= until_t
            if room and s.agent.runtime.model is not None:
                s.step()
            else:
                s.agent.tick(clock.now)
        clock.now += 1.0
        time.sleep(0.02)
    return condition()


def deployed_pruned(store, device_id, exclude=()):
    d = store.get_device(device_id)
    return d.deployed_version if d.deployed_version and d.deployed_version not in exclude and \
        store.version_manifest(d.deployed_version).device_id == device_id else None


@pytest.mark.slow
def test_drift_triggers_a_retrain_that_is_registered_and_installed(fleet):
    store, tracker = fleet["store"], fleet["tracker"]
    scenario = {"seed": 5, "devices": [{"id": "shop", "phases": [
        {"name": "shoes", "duration": 2500, "classes": FOOTWEAR},
        {"name": "bags", "duration": 10**6, "classes": BAGS}]}]}
    sims, clock = agents(fleet, scenario, "drift")
    sim = sims[0]
    device_id = sim.agent.device_id

    # Phase 1: the initial retrain on the device's own sketches, installed by the agent.
    assert run_until(sims, clock, lambda: deployed_pruned(store, device_id), 240, until_t=2500), \
        history(store, device_id)
    first = deployed_pruned(store, device_id)
    while sim.stream.t < 2500:  # finish the phase the first version was built for
        sim.step()
        clock.now += 1.0
    phase_change = time.time()
    # Phase 2: the class mix changes; only sketches and telemetry tell the controller. The stale
    # version is replaced by the base model at once, and the base by the device's next version.
    assigned = set()

    def second_version_installed():
        assigned.add(store.get_device(device_id).desired_version)
        return deployed_pruned(store, device_id, exclude={first})

    assert run_until(sims, clock, second_version_installed, 300), history(store, device_id)
    assert fleet["base"] in assigned
    second = store.get_version(deployed_pruned(store, device_id))
    job = store.get_job(second.job_id)
    # Enqueued after the class mix changed, for a reason the controller saw in the device's data:
    # drift of its sketches, or (when the agent already rolled the stale version back) a re-prune.
    assert job.created_at.timestamp() > phase_change
    assert job.trigger_reason.split()[0] in ("drift", "labelled", "estimated", "initial:"), job.trigger_reason
    # ... and only once the device ran the base: the new version is shadow-evaluated against the
    # base, not against the stale version it replaces.
    def utc(t):
        return (t if t.tzinfo else t.replace(tzinfo=datetime.UTC)).timestamp()

    base_applied = store.db.run(lambda s: [utc(e.received_at) for e in list_events(s, device_id, 200)
                                           if e.kind == "applied" and e.version_id == fleet["base"]])
    assert any(phase_change < t <= utc(job.created_at) for t in base_applied), history(store, device_id)
    assert tracker.version_by_alias("tiny-cnn", alias_for_device(device_id)) == second.mlflow_version
    run = tracker.client.get_run(second.mlflow_run_id)
    assert run.data.tags["device_id"] == device_id and run.data.tags["trigger"] == job.trigger_reason[:500]
    assert sim.agent.runtime.model.manifest.version_id == second.id
    for s in sims:
        s.agent.close()


@pytest.mark.slow
def test_a_regressing_canary_is_aborted_and_rolled_back(fleet):
    store, ck = fleet["store"], fleet["ck"]
    scenario = {"seed": 6, "devices": [{"id": "cam", "count": 2, "labels": {"cohort": "canary-it"}, "phases": [
        {"name": "all", "duration": 10**6, "classes": "all"}]}]}
    sims, clock = agents(fleet, scenario, "canary")
    ids = [s.agent.device_id for s in sims]
    assert run_until(sims, clock, lambda: all(store.get_device(i).deployed_version == fleet["base"] for i in ids), 60)
    # A fleet-wide version that was pruned far too hard, with floors that let it through the
    # shadow check: only the devices' accuracy after the swap can catch it.
    from tests.tiny_model import device_sketches
    from workers.policy import Policy
    from workers.retrain import retrain

    sketches = [parse_sketch(b) for b in device_sketches(ck, "fleet", 6, classes=tuple(range(10)))]
    bad = retrain(ck, sketches, Policy(mode="target_compression", target_compression=400.0, min_compression=1.0,
                                       kl_budget=5.0), device_id=None)
    manifest = replace(bad.manifest, version_id=f"tiny-bad-{uuid.uuid4().hex[:8]}", signature="", key_id="",
                       floors=PolicyFloors(shadow_agreement_min=0.0, rollback_accuracy_drop_pp=5.0,
                                           rollback_window=200))
    for data in bad.files.values():
        store.put_artifact(data)
    version = store.register_model_version(manifest, status="approved")
    rollout = store.create_rollout(version.id, "canary-it", stages=(0.5, 1.0),
                                   thresholds={"max_accuracy_drop_pp": 5.0, "max_failures": 1,
                                               "min_devices_reporting": 1})
    canary = store.rollout_device_ids(rollout.id)
    assert len(canary) == 1

    def aborted():
        return next(r for r in store.list_rollouts() if r.id == rollout.id).state == "aborted"

    assert run_until(sims, clock, aborted, 240), history(store, canary[0])
    assert store.get_device(canary[0]).desired_version == fleet["base"]
    assert run_until(sims, clock, lambda: store.get_device(canary[0]).deployed_version == fleet["base"], 60)
    other = next(i for i in ids if i not in canary)
    assert store.get_device(other).desired_version == fleet["base"]  # never got the bad version
    for s in sims:
        s.agent.close()

