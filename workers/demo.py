"""`qsae-fleet demo`: the whole dynamic-pruning loop on one machine, with the embedded defaults.

SQLite, a local Ray, an MLflow store under `.fleet/`, no Redis. It trains (or loads) the base
model, starts the control plane, the dispatcher and the controller on 127.0.0.1, simulates a fleet
whose data drifts, and prints what the controller did for each device and phase.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

logger = logging.getLogger(__name__)
console = Console(width=max(Console().width, 120))

STATE = Path(".fleet")


@dataclass(frozen=True)
class DemoPlan:
    devices: int  # simulated agents
    phase_scale: float  # phase lengths relative to the scenario file
    seconds_per_round: float  # real-time pace of the stream
    quick_base: bool  # a 1-epoch base model instead of the pinned 6-epoch one


FULL = DemoPlan(devices=6, phase_scale=2.0, seconds_per_round=0.5, quick_base=False)  # ~5 min of stream
QUICK = DemoPlan(devices=3, phase_scale=0.8, seconds_per_round=0.5, quick_base=True)  # ~2 min


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout_s: float, step_s: float = 0.2,
                 alive: Callable[[], bool] = lambda: True, request_timeout_s: float | None = None) -> bool:
    """Whether GET `url` answers 200 within `timeout_s` (False at once when `alive()` turns False).
    Each GET may take `request_timeout_s` (default: `step_s`, at least 1 s)."""
    deadline = time.monotonic() + timeout_s
    per_request = max(step_s, 1.0) if request_timeout_s is None else request_timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url, timeout=per_request).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(step_s)
    return False


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10.0) -> None:
    """Ask a child process to exit (SIGTERM), and kill it if it has not within `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _base_checkpoint(quick: bool) -> Any:
    from workers.training import TrainConfig, load_base, load_or_train

    models = STATE / "models"
    if quick:  # a base model of its own name: MLflow registers one model per base model
        from workers import nets

        spec = {**nets.pinned_spec(), "name": f"{nets.pinned_spec()['name']}-quick"}
        return load_or_train(spec, TrainConfig(epochs=1), cache_dir=models, progress=True)
    return load_base(models, progress=True)


class _Server:
    """The control plane under uvicorn in a thread, on a free loopback port."""

    def __init__(self, settings: Any) -> None:
        import uvicorn

        from control_plane.main import create_app

        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port,
                                log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="control-plane", daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def start(self) -> None:
        self.thread.start()
        if not wait_healthy(f"{self.url}/healthz", 30):
            raise RuntimeError("the control plane did not start within 30 s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _scaled_scenario(plan: DemoPlan) -> dict[str, Any]:
    from edge_agent.simulator import load_scenario

    doc = load_scenario("demo")
    for device in doc["devices"]:
        for phase in device["phases"]:
            phase["duration"] = int(phase["duration"] * plan.phase_scale)
    return doc


class FleetSession:
    """The embedded stack for one run: control plane (uvicorn thread), dispatcher and controller
    threads on a local Ray, a fresh SQLite database under `run_dir`, MLflow at `mlflow_uri`."""

    def __init__(self, ck: Any, run_dir: Path, mlflow_uri: str, policy: dict[str, Any] | None = None) -> None:
        self.ck = ck
        self.run_dir = run_dir
        self.mlflow_uri = mlflow_uri
        self.policy = policy or {}
        self.admin_key = "qk_demo_" + secrets.token_urlsafe(24)

    def __enter__(self) -> FleetSession:
        from control_plane.controller.loop import Controller, ControllerConfig
        from control_plane.db.migrate import upgrade
        from control_plane.services import FleetStore
        from control_plane.settings import Settings
        from workers.dispatcher import Dispatcher, DispatcherConfig, init_ray
        from workers.tracking import Tracker

        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.settings = Settings(state_dir=self.run_dir, port=free_port(), bootstrap_admin_key=self.admin_key,
                                 mlflow_tracking_uri=self.mlflow_uri, calibration_size=512, redis_url=None)
        upgrade(str(self.settings.database_url))
        self.server = _Server(self.settings)
        self.server.start()
        self.url = self.server.url
        self.store = FleetStore(self.settings)
        _set_demo_policy(self.url, self.admin_key, self.policy)
        init_ray(None, num_cpus=2)
        self.tracker = Tracker(self.mlflow_uri, (STATE / "mlartifacts").resolve())
        self.stop = threading.Event()
        dispatcher = Dispatcher(self.store, self.tracker, DispatcherConfig(max_parallel=2), checkpoint=self.ck)
        controller = Controller(self.store, ControllerConfig(tick_s=1.0, min_inferences=256,
                                                             min_fresh_samples=self.settings.calibration_size,
                                                             debounce_s=10.0))
        self.threads = [threading.Thread(target=dispatcher.run, args=(self.stop,), name="dispatcher", daemon=True),
                        threading.Thread(target=controller.run, args=(self.stop,), name="controller", daemon=True)]
        for t in self.threads:
            t.start()
        base_job, _ = self.store.enqueue_job(None, "train_base", f"base:{self.ck.name}:{self.ck.base_version}",
                                             "the fleet's starting version")
        self.base_version = _wait_for_job(self.store, base_job.id)
        return self

    def simulate(self, scenario: dict[str, Any], devices: int, seconds_per_round: float,
                 progress: Any = None) -> Any:
        from edge_agent.simulator import simulate

        return simulate(self.url, scenario, devices=devices, operator_key=self.admin_key,
                        state_dir=self.run_dir / "agents", initial_version=self.base_version,
                        base_model=self.ck.name, progress=progress, real_seconds_per_round=seconds_per_round)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.server.stop()
        self.store.close()


def run_demo(quick: bool = False) -> None:
    plan = QUICK if quick else FULL
    t_start = time.monotonic()
    console.rule("[bold]QSAE Fleet demo" + (" (quick)" if quick else ""))
    console.print("1/4 base model: the pinned CNN on Fashion-MNIST (trained once, then cached)")
    ck = _base_checkpoint(plan.quick_base)
    console.print(f"    {ck.name} {ck.base_version}: test accuracy " +
                  ", ".join(f"{k} {100 * v:.1f} %" for k, v in ck.metrics.items()))
    mlflow_uri = f"sqlite:///{(STATE / 'mlflow.db').resolve()}"
    console.print("2/4 services: control plane, dispatcher (local Ray), controller on 127.0.0.1")
    with FleetSession(ck, (STATE / "demo").resolve(), mlflow_uri) as fleet:
        store = fleet.store
        console.print(f"    base version {fleet.base_version} registered in MLflow as {ck.name} (alias champion)")
        console.print(f"3/4 fleet: {plan.devices} simulated devices, three kinds of drift, "
                      f"{plan.seconds_per_round:.2f} s per round of 32 images")
        scenario = _scaled_scenario(plan)
        with Progress(TextColumn("    stream"), BarColumn(), TextColumn("{task.completed}/{task.total} rounds"),
                      TextColumn("{task.fields[jobs]}"), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("stream", total=None, jobs="")

            def on_round(done: int, total: int) -> None:
                if done % 5 == 0 or done == total:
                    counts = Counter(j.status for j in store.list_jobs(limit=1000))
                    progress.update(task, completed=done, total=total,
                                    jobs=f"jobs: {counts.get('succeeded', 0)} done, "
                                         f"{counts.get('running', 0) + counts.get('queued', 0)} pending")

            report = fleet.simulate(scenario, plan.devices, plan.seconds_per_round, on_round)
        console.print("4/4 results")
        dense = dense_correct(report, scenario, ck)
        print_results(store, report, scenario, dense)
        figure = draw_stream(store, report, scenario, dense, STATE / "demo.png")
        console.print(f"\nfleet accuracy {100 * (report.accuracy or 0):.2f} %, label-free estimate MAE "
                      f"{report.estimate_mae_pp or float('nan'):.2f} pp; demo took "
                      f"{time.monotonic() - t_start:.0f} s")
        console.print("dashboard: serve this fleet again, then open http://127.0.0.1:8000/dashboard "
                      f"with the operator key {fleet.admin_key}:")
        console.print(f"    FLEET_STATE_DIR={fleet.run_dir} FLEET_MLFLOW_TRACKING_URI={mlflow_uri} "
                      f"FLEET_BOOTSTRAP_ADMIN_KEY={fleet.admin_key} .venv/bin/qsae-fleet serve")
        console.print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {mlflow_uri} --port 5000")
        console.print(f"figure (accuracy over the stream, per device): {figure}")


def _set_demo_policy(url: str, admin_key: str, overrides: dict[str, Any] | None = None) -> None:
    """The default policy, with a debounce that suits a stream compressed into minutes."""
    from workers.policy import DEFAULT_POLICY

    headers = {"Authorization": f"Bearer {admin_key}"}
    r = httpx.get(f"{url}/api/v1/policies/default", headers=headers, timeout=10)
    r.raise_for_status()
    values = {k: v for k, v in r.json().items() if k not in ("name", "updated_at")}
    values.update(kl_budget=DEFAULT_POLICY.kl_budget, min_compression=DEFAULT_POLICY.min_compression)
    values["extra"] = {**values.get("extra", {}), "debounce_s": 10.0, "min_labelled": 150}
    values.update(overrides or {})
    httpx.put(f"{url}/api/v1/policies/default", headers=headers, json=values, timeout=10).raise_for_status()


def _wait_for_job(store: Any, job_id: int, timeout_s: float = 900) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.status == "succeeded":
            return str(job.version_id)
        if job.status in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job.status}: {job.error}")
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")


def print_results(store: Any, report: Any, scenario: dict[str, Any], dense_right: list[tuple[Any, Any]]) -> None:
    """Per device and phase, what served and at what compression, next to dense (`dense_correct`)."""
    from qsae_shared.distributions import profiles_from_scenario

    phase_names = {p.device_id: [ph.describe() for ph in p.phases] for p in profiles_from_scenario(scenario)}
    dense = {(d.device, int(ph)): float(right[phases == ph].mean())
             for d, (right, phases) in zip(report.devices, dense_right, strict=True) for ph in set(phases.tolist())}
    versions = {v.id: v for v in store.list_versions(limit=1000)}
    table = Table(title="per device and phase: what ran, and what it cost")
    for col, justify in (("device", "left"), ("phase", "left"), ("versions served (share of phase)", "left"),
                         ("compr.", "right"), ("dense", "right"), ("deployed", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for d in report.devices:
        for ph, (correct, n) in sorted(d.phase_true.items()):
            served = d.phase_versions.get(ph, {})
            total = sum(served.values()) or 1
            shares = ", ".join(f"{_label(versions.get(v), v)} {100 * c / total:.0f}%" for v, c in served.items())
            known = {v: c for v, c in served.items() if v in versions and versions[v].compression_ratio}
            ratio = (sum(versions[v].compression_ratio * c for v, c in known.items()) / sum(known.values())
                     if known else None)
            names = phase_names.get(d.device, [])
            table.add_row(d.device if ph == 0 else "", names[ph] if ph < len(names) else str(ph), shares,
                          f"{ratio:.1f}x" if ratio else "-",
                          f"{100 * dense.get((d.device, ph), float('nan')):.1f}%", f"{100 * correct / n:.1f}%")
    console.print(table)
    console.print("[bold]retrains[/bold] (trigger -> outcome)")
    for d in report.devices:
        jobs = sorted((j for j in store.list_jobs(device_id=d.device_id, limit=100) if j.kind == "retrain"),
                      key=lambda j: j.id)
        lines = []
        for j in jobs:
            res = j.result or {}
            outcome = res.get("decision", j.status)
            if "compression_ratio" in res:
                outcome += f" {res['compression_ratio']:.1f}x kl {res.get('kl', float('nan')):.3f}"
            lines.append(f"job {j.id}: {j.trigger_reason} -> {outcome}")
        console.print(f"  {d.device}: " + ("; ".join(lines) if lines else "none"))


def _label(version: Any, version_id: str) -> str:
    if version is None:
        return version_id[-8:]
    return "base" if version.device_id is None else f"v{version.mlflow_version or version_id[-6:]}"


def _short(version_id: str) -> str:
    return version_id if len(version_id) <= 28 else "..." + version_id[-16:]


def replay_streams(report: Any, scenario: dict[str, Any]) -> Iterator[tuple[Any, Any, Any]]:
    """Per device, the images it saw as the simulator drew them (batch by batch), one device at a
    time: (preprocessed images, labels, phase indices), in stream order."""
    import numpy as np

    from edge_agent.simulator import SimulationConfig, expand_profiles
    from qsae_shared.data import preprocess
    from qsae_shared.distributions import DeviceStream

    cfg = SimulationConfig.from_scenario(scenario, devices=len(report.devices))
    for prof, d in zip(expand_profiles(scenario, cfg.devices), report.devices, strict=True):
        stream = DeviceStream(prof, cfg.split, "simulate")
        batches = [stream.next_batch(cfg.batch_size) for _ in range(d.inferences // cfg.batch_size)]
        if not batches:
            yield np.zeros((0, 1, 28, 28), dtype=np.float32), np.zeros(0, dtype=int), np.zeros(0, dtype=int)
            continue
        yield (preprocess(np.concatenate([b.images for b in batches])), np.concatenate([b.labels for b in batches]),
               np.concatenate([b.phase_index for b in batches]))


def dense_correct(report: Any, scenario: dict[str, Any], ck: Any) -> list[tuple[Any, Any]]:
    """The dense fp32 network on exactly the images each device saw: per device, (which images it
    classified right, each image's phase index), in stream order. Run in ONNX Runtime, as the
    deployed models and `benchmarks.dynamic`'s dense row are."""
    from workers import export

    sess = export.session(export.dense_onnx(ck.network(), ck.spec))
    return [(export.logits(sess, x).argmax(1) == y, phases) for x, y, phases in replay_streams(report, scenario)]


def draw_stream(store: Any, report: Any, scenario: dict[str, Any], dense: list[tuple[Any, Any]], path: Path) -> Path:
    """The fleet over its stream (workers/figures.py): the deployed models against dense, per device."""
    import numpy as np

    from edge_agent.simulator import expand_profiles
    from workers import figures

    ratios = {v.id: v.compression_ratio for v in store.list_versions(limit=10_000) if v.compression_ratio}
    series = figures.stream_series(report.devices, expand_profiles(scenario, len(report.devices)), [ph for _, ph in dense],
                                   {"dense": np.concatenate([c for c, _ in dense])}, ratios)
    fig = figures.stream_figure(series, "QSAE Fleet demo: each device's deployed models against the dense network",
                                {figures.LOOP: "deployed (the loop)", "dense": "dense fp32"})
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
