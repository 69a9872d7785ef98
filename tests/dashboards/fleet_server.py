"""A real control plane for the dashboard tests (and `python -m tests.dashboards.fleet_server` to
look at the dashboard by hand): SQLite in a temp folder, uvicorn on 127.0.0.1 in a thread, and a
small fleet seeded through the operator and device APIs and the control plane's data-access layer
(`FleetStore`), the way agents and workers fill it."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

import dashboards
from control_plane.db.migrate import upgrade
from control_plane.main import create_app
from control_plane.services import auth
from control_plane.services.store import FleetStore
from control_plane.settings import Settings
from tests.control_plane.cp_helpers import stub_manifest
from workers.demo import free_port

BASE_MODEL = "fmnist-cnn"
MLFLOW_UI = "http://127.0.0.1:5999"  # only used to build links; nothing listens there
# What `seed` leaves: one device in each state the fleet page counts.
SEEDED_STATES = {"cam-01": "healthy", "cam-02": "drifting", "cam-03": "retraining", "cam-04": "rolling_back",
                 "cam-05": "offline", "cam-06": "healthy"}


def _mounted(app: Any) -> bool:
    return any(getattr(r, "path", None) == dashboards.DASHBOARD_PATH for r in app.routes)


@dataclass
class LiveServer:
    url: str
    settings: Settings
    store: FleetStore
    keys: dict[str, str] = field(default_factory=dict)  # role -> API key
    devices: dict[str, str] = field(default_factory=dict)  # name -> device id
    tokens: dict[str, str] = field(default_factory=dict)  # name -> device token

    def api(self, role: str = "operator") -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {self.keys[role]}"},
                            timeout=10)


@contextlib.contextmanager
def live_server(state_dir: Path) -> Iterator[LiveServer]:
    """A migrated SQLite control plane with the dashboard mounted, served until the block ends."""
    state_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{state_dir / 'fleet.db'}"
    upgrade(url)
    settings = Settings(state_dir=state_dir, database_url=url, mlflow_ui_url=MLFLOW_UI, rate_limit_per_minute=0,
                        offline_after_s=600.0)
    app = create_app(settings)
    if not _mounted(app):
        dashboards.mount(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the control plane did not start within 20 s")
        time.sleep(0.05)
    store = FleetStore(settings)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, store=store)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


def make_version(store: FleetStore, version_id: str, device_id: str | None, compression: float, kl: float,
                 run_id: str | None = None, status: str = "candidate", job_id: int | None = None) -> str:
    """Store an artifact and register a version the way the dispatcher does."""
    payload = f"weights of {version_id}".encode()
    sha = store.put_artifact(payload)
    m = stub_manifest(version_id, device_id, payload, sha, kl=kl, compression=compression, base_model=BASE_MODEL,
                      stem_shape=(4, 14, 14))
    return store.register_model_version(m, mlflow_name=BASE_MODEL, mlflow_version=version_id.rsplit("-", 1)[-1],
                                        mlflow_run_id=run_id, status=status, job_id=job_id).id


def _telemetry(seq: int, t_end: float, correct: int, est: float, version: str | None) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "seq": seq, "window_start": t_end - 60, "window_end": t_end,
            "inference_count": 200, "labelled_count": 40, "labelled_correct": correct, "estimated_accuracy": est,
            "mean_confidence": est, "latency_p50_ms": 0.2, "latency_p95_ms": 0.4, "deployed_version": version,
            "outbox_dropped": 0}


def seed(live: LiveServer) -> None:
    """Three keys (one per role) and six devices in five states, with versions, telemetry, jobs and
    a rollout. Deterministic figures, so tests can compare the page with the API."""
    store = live.store
    for role in ("viewer", "operator", "admin"):
        live.keys[role] = store.db.run(auth.create_api_key, name=f"{role} key", role=role, actor="test")[1]
    op = live.api("operator")
    plan = [("cam-01", "plant-a"), ("cam-02", "plant-a"), ("cam-03", "plant-a"), ("cam-04", "plant-b"),
            ("cam-05", "plant-b"), ("cam-06", "plant-b")]
    for name, cohort in plan:
        r = op.post("/devices", json={"name": name, "labels": {"cohort": cohort, "site": "lyon"},
                                      "base_model": BASE_MODEL})
        r.raise_for_status()
        e = httpx.post(f"{live.url}/api/v1/enroll", json={"enrollment_token": r.json()["enrollment_token"],
                                                          "agent_version": "0.1.0"}, timeout=10)
        e.raise_for_status()
        live.devices[name] = e.json()["device_id"]
        live.tokens[name] = e.json()["device_token"]
    d = live.devices

    # Versions: two for cam-01 (a re-prune after drift), one each for cam-02 and cam-04, and a
    # fleet-wide one for rollouts.
    job1, _ = store.enqueue_job(d["cam-01"], "retrain", "seed:cam-01:1", "initial: no pruned model deployed yet")
    store.claim_next_job("seed-worker")
    v11 = make_version(store, "fmnist-cnn-cam01-0001", d["cam-01"], 12.4, 0.021, run_id="a1" * 16, job_id=job1.id)
    store.complete_job(job1.id, version_id=v11)
    job2, _ = store.enqueue_job(d["cam-01"], "retrain", "seed:cam-01:2", "drift 0.142 > 0.1")
    store.claim_next_job("seed-worker")
    v12 = make_version(store, "fmnist-cnn-cam01-0002", d["cam-01"], 15.8, 0.034, run_id="b2" * 16, job_id=job2.id)
    store.complete_job(job2.id, version_id=v12)
    v2 = make_version(store, "fmnist-cnn-cam02-0001", d["cam-02"], 9.6, 0.018, run_id="c3" * 16)
    v41 = make_version(store, "fmnist-cnn-cam04-0001", d["cam-04"], 11.0, 0.02, run_id="d4" * 16)
    v42 = make_version(store, "fmnist-cnn-cam04-0002", d["cam-04"], 17.2, 0.049, run_id="e5" * 16)
    make_version(store, "fmnist-cnn-fleet-0001", None, 8.1, 0.012, run_id="f6" * 16, status="approved")

    # Telemetry: 30 one-minute windows ending now; cam-01 switches version half way.
    now = time.time()
    series = {
        "cam-01": [(36, 0.9, v11)] * 15 + [(37, 0.91, v12)] * 15,
        "cam-02": [(34, 0.86, v2)] * 20 + [(30, 0.78, v2)] * 10,
        "cam-03": [(35, 0.88, None)] * 30,
        "cam-04": [(36, 0.9, v41)] * 20 + [(33, 0.84, v42)] * 10,
        "cam-06": [(38, 0.93, None)] * 30,
    }
    for name, rows in series.items():
        recs = [_telemetry(i, now - 60 * (len(rows) - 1 - i), c, e, v) for i, (c, e, v) in enumerate(rows)]
        r = httpx.post(f"{live.url}/api/v1/devices/{d[name]}/telemetry", json={"records": recs},
                       headers={"Authorization": f"Bearer {live.tokens[name]}"}, timeout=10)
        r.raise_for_status()
    for name, version in (("cam-01", v12), ("cam-02", v2), ("cam-04", v41)):
        store.set_desired_version(d[name], version, reason="seed: deployed")
    store.set_desired_version(d["cam-04"], v42, reason="seed: re-pruned")

    # States: cam-02 drifts, cam-03 retrains (a running job), cam-04 was rolled back by its agent,
    # cam-05 never reported (offline).
    store.record_drift(d["cam-01"], 0.004)
    store.record_drift(d["cam-02"], 0.31)
    job3, _ = store.enqueue_job(d["cam-03"], "retrain", "seed:cam-03:1", "estimated accuracy 84.0% < baseline 88.0% - 4 pp")
    claimed = store.claim_next_job("seed-worker")
    assert claimed is not None and claimed.id == job3.id
    store.update_job_progress(job3.id, 0.4, "tau search")
    job4, _ = store.enqueue_job(d["cam-04"], "retrain", "seed:cam-04:1", "interval: deployed 86400 s ago")
    store.claim_next_job("seed-worker")
    store.fail_job(job4.id, "no sketches uploaded yet", retry=False)
    r = httpx.post(f"{live.url}/api/v1/devices/{d['cam-04']}/events",
                   json={"events": [{"uuid": str(uuid.uuid4()), "kind": "rolled_back", "version_id": v42,
                                     "reason": "accuracy 84.1% below floor 86.0%", "at": time.time()}]},
                   headers={"Authorization": f"Bearer {live.tokens['cam-04']}"}, timeout=10)
    r.raise_for_status()
    op.post(f"/devices/{d['cam-04']}/rollback", json={"reason": "agent rolled back"}).raise_for_status()

    # A rollout of the fleet-wide version to plant-b, first stage.
    op.post("/rollouts", json={"version_id": "fmnist-cnn-fleet-0001", "cohort": "plant-b", "stages": [0.5, 1.0],
                               "reason": "seed"}).raise_for_status()
    # Telemetry is acknowledged before the writer's group commit updates the devices' rows.
    deadline = time.monotonic() + 15
    while True:
        states = {x["name"]: x["state"] for x in op.get("/devices").json()["items"]}
        if states == SEEDED_STATES:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"seeded devices did not reach their states: {states}")
        time.sleep(0.1)
    op.close()


if __name__ == "__main__":  # pragma: no cover - a manual preview
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, live_server(Path(tmp)) as live:
        seed(live)
        print(f"dashboard: {live.url}/dashboard/")
        for role, key in live.keys.items():
            print(f"{role:9s} key: {key}")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
