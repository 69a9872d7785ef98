"""Fleet simulator: N edge agents in one process, each on its own device stream.

Streams come from `qsae_shared.distributions` (a YAML scenario: per device its class mix,
corruptions and phases); every agent is a real `edge_agent.Agent` talking HTTP to a control plane.
Time is simulated: each round every device classifies one batch and the shared clock advances by
`seconds_per_batch`, so an hour of fleet life runs in seconds. Labels go back to the agents at
`label_rate` after `label_delay_s` simulated seconds. Because the simulator knows every true label,
it also measures how well the agents' label-free accuracy estimate tracks the real accuracy.

Called by `qsae-fleet simulate`; numpy and the shared data module only (no torch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.enroll import enroll
from edge_agent.errors import AgentError, ConfigError
from edge_agent.model import LoadedModel
from edge_agent.runtime import Predictions, Runtime
from edge_agent.state import CREDENTIALS, load_credentials
from qsae_shared.distributions import DeviceProfile, DeviceStream, profiles_from_scenario
from qsae_shared.manifest import Manifest

logger = logging.getLogger(__name__)

SCENARIO_DIR = Path(__file__).parent / "scenarios"


@dataclass
class SimulationConfig:
    devices: int = 4  # agents to run; scenario device entries are repeated round-robin if fewer
    rounds: int | None = None  # batches per device; None = the longest profile's total inferences
    batch_size: int = 32  # images per predict() call
    seconds_per_batch: float = 1.0  # simulated time between two batches of one device
    label_rate: float = 0.5  # share of predictions whose true label is fed back
    label_delay_s: float = 30.0  # simulated seconds before a label arrives
    telemetry_interval_s: float = 60.0  # simulated seconds per telemetry window
    sketch_interval_s: float = 300.0  # simulated seconds between sketches
    sketch_min_inferences: int = 256  # inferences a sketch covers at least
    poll_interval_s: float = 10.0  # simulated seconds between assignment polls (unchanged: a 304)
    eval_window: int = 1000  # inferences per window of the estimate-vs-truth comparison
    threads: int = 4  # worker threads stepping the agents
    base_model: str = "fmnist-cnn"  # base model of devices the simulator creates
    name_prefix: str = "sim-"  # device names on the server: prefix + scenario device id
    wait_for_model_s: float = 120.0  # real seconds to wait for every agent's first model
    split: str = "test"  # data split the streams draw from
    pending_labels: int = 20_000  # predictions each agent remembers for late labels
    real_seconds_per_round: float = 0.0  # real-time pace of rounds (0: flat out); retrain lag then counts

    @classmethod
    def from_scenario(cls, doc: dict[str, Any], **overrides: Any) -> SimulationConfig:
        """Defaults < the scenario's `simulation:` block < `overrides` (None is ignored)."""
        known = {f.name for f in fields(cls)}
        block = doc.get("simulation") or {}
        unknown = set(block) - known
        if unknown:
            raise ConfigError(f"unknown simulation settings {sorted(unknown)}; known: {sorted(known)}")
        values = {**block, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**values)


def load_scenario(path: Path | str) -> dict[str, Any]:
    """A scenario file (YAML or JSON); a bare name means one of edge_agent/scenarios/*.yaml."""
    import yaml  # only the simulator reads YAML; the device runtime does not need it

    p = Path(path)
    if not p.exists() and (SCENARIO_DIR / f"{p.name}.yaml").exists():
        p = SCENARIO_DIR / f"{p.name}.yaml"
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc}; bundled scenarios: "
                          f"{', '.join(sorted(q.stem for q in SCENARIO_DIR.glob('*.yaml')))}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"scenario {path} must be a mapping with a `devices` list")
    return doc


def expand_profiles(doc: dict[str, Any], n: int) -> list[DeviceProfile]:
    """n device profiles: the scenario's in order, repeated with suffixed ids when n is larger."""
    base = profiles_from_scenario(doc)
    if n <= len(base):
        return base[:n]
    return [replace(base[i % len(base)], device_id=f"{base[i % len(base)].device_id}-r{i // len(base)}")
            if i >= len(base) else base[i] for i in range(n)]


class SimClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class EstimateWindow:
    device: str
    phase: int
    version: str
    inferences: int
    true_accuracy: float
    estimated_accuracy: float


@dataclass
class DeviceResult:
    device: str  # scenario id
    device_id: str  # server id
    inferences: int = 0
    correct: int = 0
    labels_fed: int = 0
    skipped_batches: int = 0  # rounds without a model to serve
    versions: list[str] = field(default_factory=list)  # served, in order
    switches: list[tuple[int, str]] = field(default_factory=list)  # (inference index, version) where a version began
    hits: bytearray = field(default_factory=bytearray)  # 1 per inference the served model got right, in order
    windows: list[EstimateWindow] = field(default_factory=list)
    phase_true: dict[int, list[int]] = field(default_factory=dict)  # phase -> [correct, n]
    phase_est: dict[int, float] = field(default_factory=dict)  # phase -> sum of expected correctness
    phase_versions: dict[int, dict[str, int]] = field(default_factory=dict)  # phase -> version -> inferences
    outbox_left: int = 0
    outbox_dropped: int = 0
    polls_unchanged: int = 0  # assignment polls with the current ETag while nothing had changed
    polls_not_modified: int = 0  # ... answered 304


class DeviceAgent(Protocol):
    """What a simulated device drives: the real `Agent`, or `OfflineAgent` without a server."""

    device_id: str
    runtime: Runtime

    def predict(self, images: np.ndarray, preprocessed: bool = False) -> Predictions: ...
    def feedback(self, ids: np.ndarray, labels: np.ndarray) -> int: ...
    def tick(self, now: float | None = None) -> None: ...
    def flush(self, now: float | None = None, force: bool = False) -> None: ...
    def close(self) -> None: ...


class SimDevice:
    def __init__(self, profile: DeviceProfile, agent: DeviceAgent, cfg: SimulationConfig, clock: SimClock) -> None:
        self.profile = profile
        self.agent = agent
        self.cfg = cfg
        self.clock = clock
        self.stream = DeviceStream(profile, cfg.split, "simulate")
        digest = hashlib.sha256(f"{profile.seed}/{profile.device_id}/labels".encode()).digest()
        self.rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))  # which labels come back
        self.labels: deque[tuple[float, np.ndarray, np.ndarray]] = deque()  # (due, ids, labels)
        self.result = DeviceResult(profile.device_id, agent.device_id)
        self._win: list[Any] = []  # [phase, version, n, correct, est_sum]
        self.lock = threading.Lock()

    def step(self) -> None:
        with self.lock:
            now = self.clock()
            runtime = self.agent.runtime
            model = runtime.model
            if model is None:
                self.result.skipped_batches += 1
            else:
                batch = self.stream.next_batch(self.cfg.batch_size)
                p = self.agent.predict(batch.images)
                hits = p.classes == batch.labels
                est = model.estimator.per_prediction(p.confidence)
                self._account(batch.phase_index, p.version, hits, est)
                chosen = self.rng.random(len(hits)) < self.cfg.label_rate
                if chosen.any():
                    self.labels.append((now + self.cfg.label_delay_s, p.ids[chosen], batch.labels[chosen]))
            while self.labels and self.labels[0][0] <= now:
                _, ids, labels = self.labels.popleft()
                self.result.labels_fed += self.agent.feedback(ids, labels)
            self.agent.tick(now)

    def _account(self, phases: np.ndarray, version: str, hits: np.ndarray, est: np.ndarray) -> None:
        r = self.result
        if not r.versions or r.versions[-1] != version:
            r.versions.append(version)
        if not r.switches or r.switches[-1][1] != version:
            r.switches.append((r.inferences, version))
        r.hits.extend(hits.astype(np.uint8).tobytes())
        r.inferences += len(hits)
        r.correct += int(hits.sum())
        for ph in np.unique(phases):
            m = phases == ph
            pt = r.phase_true.setdefault(int(ph), [0, 0])
            pt[0] += int(hits[m].sum())
            pt[1] += int(m.sum())
            r.phase_est[int(ph)] = r.phase_est.get(int(ph), 0.0) + float(est[m].sum())
            served = r.phase_versions.setdefault(int(ph), {})
            served[version] = served.get(version, 0) + int(m.sum())
        ph0 = int(phases[-1])
        if self._win and (self._win[0] != ph0 or self._win[1] != version):
            self._close_window()
        if not self._win:
            self._win = [ph0, version, 0, 0, 0.0]
        self._win[2] += len(hits)
        self._win[3] += int(hits.sum())
        self._win[4] += float(est.sum())
        if self._win[2] >= self.cfg.eval_window:
            self._close_window()

    def _close_window(self) -> None:
        ph, version, n, correct, est = self._win
        if n >= self.cfg.eval_window // 2:  # a short tail window is too noisy to judge the estimate
            self.result.windows.append(EstimateWindow(self.profile.device_id, ph, version, n, correct / n, est / n))
        self._win = []

    def finish(self) -> DeviceResult:
        with self.lock:
            if self._win:
                self._close_window()
            outbox = getattr(self.agent, "outbox", None)
            if outbox is not None:
                self.result.outbox_left = len(outbox)
                self.result.outbox_dropped = outbox.dropped
            self.result.polls_unchanged = getattr(self.agent, "polls_unchanged", 0)
            self.result.polls_not_modified = getattr(self.agent, "polls_not_modified", 0)
            return self.result


@dataclass
class SimulationReport:
    config: dict[str, Any]
    devices: list[DeviceResult]
    seconds: float  # real time the simulation took
    simulated_seconds: float
    inferences: int
    estimate_mae_pp: float | None  # mean |estimated - true| accuracy over eval windows, percentage points
    estimate_phase_mae_pp: float | None  # the same over whole (device, phase) pairs
    accuracy: float | None  # true accuracy over every inference of the fleet
    not_modified_ratio: float | None = None  # share of unchanged assignment polls answered 304


    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for dev in d["devices"]:
            dev["windows"] = len(dev["windows"])
            dev["hits"] = len(dev["hits"])
        return d

    def summary(self) -> str:
        lines = [f"{len(self.devices)} devices, {self.inferences} inferences in {self.seconds:.1f} s "
                 f"({self.simulated_seconds / 3600:.2f} simulated hours)"]
        if self.accuracy is not None:
            def pp(v: float | None) -> str:
                return "-" if v is None else f"{v:.2f} pp"

            lines.append(f"fleet accuracy {100 * self.accuracy:.2f} %; label-free estimate MAE "
                         f"{pp(self.estimate_mae_pp)} per {self.config['eval_window']} inferences, "
                         f"{pp(self.estimate_phase_mae_pp)} per device phase")
        for d in self.devices:
            acc = f"{100 * d.correct / d.inferences:.1f} %" if d.inferences else "-"
            lines.append(f"  {d.device:24s} {d.device_id:20s} {d.inferences:7d} inf  acc {acc:7s} "
                         f"versions {' -> '.join(d.versions) or '-'}  outbox {d.outbox_left} "
                         f"(dropped {d.outbox_dropped})")
        return "\n".join(lines)


def _mae(pairs: list[tuple[float, float]]) -> float | None:
    return float(np.mean([abs(a - b) for a, b in pairs]) * 100) if pairs else None


def create_device(server_url: str, operator_key: str, name: str, labels: dict[str, str], base_model: str,
                  timeout_s: float = 10.0) -> str:
    """Register a device through the operator API; returns its one-time enrollment token."""
    r = httpx.post(f"{server_url.rstrip('/')}/api/v1/devices", timeout=timeout_s,
                   headers={"Authorization": f"Bearer {operator_key}"},
                   json={"name": name, "labels": labels, "base_model": base_model})
    if r.status_code >= 400:
        raise AgentError(f"creating device {name}: HTTP {r.status_code}: {r.text[:300]}")
    return str(r.json()["enrollment_token"])


def assign_version(server_url: str, operator_key: str, device_id: str, version_id: str,
                   timeout_s: float = 10.0) -> None:
    """Start a device on `version_id` through the operator API: pin it, then release the pin at
    once, so the controller may move the device later."""
    headers = {"Authorization": f"Bearer {operator_key}"}
    base = f"{server_url.rstrip('/')}/api/v1/devices/{device_id}/pin"
    r = httpx.post(base, headers=headers, timeout=timeout_s,
                   json={"version_id": version_id, "reason": "simulator: initial version"})
    if r.status_code < 400:
        r = httpx.delete(base, headers=headers, timeout=timeout_s)
    if r.status_code >= 400:
        raise AgentError(f"assigning {version_id} to {device_id}: HTTP {r.status_code}: {r.text[:300]}")


def build_agents(profiles: list[DeviceProfile], cfg: SimulationConfig, server_url: str, state_dir: Path,
                 operator_key: str | None, clock: SimClock) -> list[SimDevice]:
    """One enrolled agent per profile, each with its own state folder under `state_dir`. A folder
    that already holds credentials is reused (a re-run continues the same devices)."""
    sims = []
    for prof in profiles:
        folder = state_dir / prof.device_id
        settings = load_settings(None, state_dir=folder, server_url=server_url,
                                 telemetry_interval_s=cfg.telemetry_interval_s,
                                 sketch_interval_s=cfg.sketch_interval_s, pending_labels=cfg.pending_labels,
                                 sketch_min_inferences=cfg.sketch_min_inferences,
                                 sketch_in_background=False,  # the simulator's threads already overlap
                                 backoff_base_s=min(5.0, cfg.seconds_per_batch * 2),
                                 poll_interval_s=cfg.poll_interval_s)
        if not (folder / CREDENTIALS).exists():
            if operator_key is None:
                raise ConfigError(f"{folder} holds no credentials: pass an operator API key so the simulator "
                                  "can create and enroll its devices")
            token = create_device(server_url, operator_key, cfg.name_prefix + prof.device_id,
                                  {**prof.labels, "simulated": "true"}, cfg.base_model)
            enroll(settings, token)
        agent = Agent(settings, load_credentials(folder), clock=clock)
        sims.append(SimDevice(prof, agent, cfg, clock))
    return sims


def simulate(server_url: str, scenario: Path | str | dict[str, Any], *, devices: int | None = None,
             operator_key: str | None = None, state_dir: Path | str = Path(".fleet/sim"),
             initial_version: str | None = None, stop: threading.Event | None = None,
             progress: Callable[[int, int], None] | None = None, **overrides: Any) -> SimulationReport:
    """Run N agents against the control plane at `server_url` on the scenario's device streams.

    `overrides` are `SimulationConfig` fields (rounds, batch_size, label_rate, label_delay_s, ...);
    `devices` is how many agents; `operator_key` lets the simulator create and enroll its devices;
    `initial_version` starts every device on that version (else the server must assign one).
    Returns what happened, including the label-free estimate's error against the true accuracy.
    """
    doc = scenario if isinstance(scenario, dict) else load_scenario(scenario)
    cfg = SimulationConfig.from_scenario(doc, devices=devices, **overrides)
    profiles = expand_profiles(doc, cfg.devices)
    rounds = cfg.rounds or -(-max(p.total_inferences for p in profiles) // cfg.batch_size)
    clock = SimClock(time.time())
    sims = build_agents(profiles, cfg, server_url, Path(state_dir), operator_key, clock)
    if initial_version is not None:
        if operator_key is None:
            raise ConfigError("initial_version needs an operator API key")
        for s in sims:
            if s.agent.runtime.model is None:
                assign_version(server_url, operator_key, s.agent.device_id, initial_version)
    return _run(sims, cfg, rounds, clock, stop or threading.Event(), progress)


def _run(sims: list[SimDevice], cfg: SimulationConfig, rounds: int, clock: SimClock, stop: threading.Event,
         progress: Callable[[int, int], None] | None) -> SimulationReport:
    t0 = time.perf_counter()
    sim_start = clock.now
    with ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="sim") as pool:
        deadline = time.monotonic() + cfg.wait_for_model_s  # first models: real time, not simulated
        while not stop.is_set() and any(s.agent.runtime.model is None for s in sims):
            if time.monotonic() > deadline:
                logger.warning("%d devices still have no model after %.0f s; they skip their batches",
                               sum(s.agent.runtime.model is None for s in sims), cfg.wait_for_model_s)
                break
            clock.now = max(clock.now, time.time())
            list(pool.map(lambda s: s.agent.tick(clock.now), sims))
            stop.wait(0.5)
        paced_from = time.monotonic()
        for r in range(rounds):
            if stop.is_set():
                break
            if cfg.real_seconds_per_round > 0:
                stop.wait(max(0.0, paced_from + r * cfg.real_seconds_per_round - time.monotonic()))
            list(pool.map(SimDevice.step, sims))
            clock.now += cfg.seconds_per_batch
            if progress:
                progress(r + 1, rounds)
        for s in sims:  # close what is open and send it
            s.agent.flush(force=True)
        list(pool.map(lambda s: s.agent.tick(clock.now), sims))
    results = [s.finish() for s in sims]
    for s in sims:
        s.agent.close()
    windows = [w for d in results for w in d.windows]
    phase_pairs = [(d.phase_est[ph] / n, c / n) for d in results for ph, (c, n) in d.phase_true.items() if n]
    total = sum(d.inferences for d in results)
    return SimulationReport(
        config=asdict(cfg), devices=results, seconds=time.perf_counter() - t0,
        simulated_seconds=clock.now - sim_start, inferences=total,
        estimate_mae_pp=_mae([(w.estimated_accuracy, w.true_accuracy) for w in windows]),
        estimate_phase_mae_pp=_mae(phase_pairs),
        accuracy=sum(d.correct for d in results) / total if total else None,
        not_modified_ratio=_ratio(sum(d.polls_not_modified for d in results),
                                  sum(d.polls_unchanged for d in results)))


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class OfflineAgent:
    """The runtime alone, with no server: for measuring the label-free estimate on a model file."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.device_id = runtime.device_id

    def predict(self, images: np.ndarray, preprocessed: bool = False) -> Predictions:
        return self.runtime.predict(images, preprocessed)

    def feedback(self, ids: np.ndarray, labels: np.ndarray) -> int:
        return self.runtime.feedback(ids, labels)

    def tick(self, now: float | None = None) -> None:
        self.runtime.close_window()  # keep memory flat; nothing is sent

    def flush(self, now: float | None = None, force: bool = False) -> None:
        self.runtime.take_sketch()

    def close(self) -> None:
        pass


def evaluate_offline(scenario: Path | str | dict[str, Any], manifest: Manifest, onnx_path: Path, *,
                     devices: int | None = None, **overrides: Any) -> SimulationReport:
    """The scenario's streams through one model on the device runtime, no control plane: how far
    the label-free estimate is from the true accuracy (what `estimate_mae_pp` reports)."""
    doc = scenario if isinstance(scenario, dict) else load_scenario(scenario)
    cfg = SimulationConfig.from_scenario(doc, devices=devices or len(profiles_from_scenario(doc)), **overrides)
    profiles = expand_profiles(doc, cfg.devices)
    rounds = cfg.rounds or -(-max(p.total_inferences for p in profiles) // cfg.batch_size)
    clock = SimClock(time.time())
    model = LoadedModel(manifest, onnx_path)
    sims = []
    for prof in profiles:
        rt = Runtime(prof.device_id, manifest.base_model, pending_labels=cfg.pending_labels, clock=clock)
        rt.swap(model)
        sims.append(SimDevice(prof, OfflineAgent(rt), cfg, clock))
    return _run(sims, cfg, rounds, clock, threading.Event(), None)


def report_json(report: SimulationReport) -> str:
    return json.dumps(report.to_dict(), indent=1, default=str)
