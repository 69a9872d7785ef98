"""The controller process: every tick, per device, read telemetry and sketches, decide, enqueue;
per active rollout, judge its devices and advance or abort.

    qsae-fleet controller        # or run_controller(stop) in a thread (the demo)

With Redis configured only the holder of a lock runs (several replicas may start it); without
Redis it assumes it is alone (the embedded default).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from control_plane.controller.rollouts import Action, Outcomes, rollout_action
from control_plane.controller.triggers import (
    AccuracyWindow,
    Decision,
    DeviceState,
    TriggerPolicy,
    decide,
    idempotency_key,
)
from control_plane.db.models import DeviceEvent
from control_plane.schemas import DevicePublic, PolicyPublic, RolloutPublic, TelemetryPublic
from control_plane.services import FleetStore
from control_plane.services import events as event_service
from qsae_shared.sketch import Sketch, parse_sketch, select_recent, without_samples

logger = logging.getLogger(__name__)

LOCK_KEY = "controller:lock"
FAILED_KINDS = ("rejected", "rolled_back", "failed")
SKETCH_WINDOW = 20  # newest uploads per device the controller judges drift and freshness on
FALLBACK_REASONS = ("drift", "labelled accuracy", "estimated accuracy")  # triggers that also mean "fall back now"


@dataclass
class ControllerConfig:
    tick_s: float = 5.0  # seconds between passes over the fleet
    min_inferences: int = 200  # telemetry needed in a window before accuracy is judged
    min_fresh_samples: int | None = None  # sketch samples of the current data a retrain needs (None: the
    # server's calibration_size, what the retrain calibrates on)
    debounce_s: float = 20.0  # no new job sooner than this after the last one
    lock_ttl_s: float = 30.0  # Redis leader lock lifetime, renewed every tick


def trigger_policy(p: PolicyPublic, cfg: ControllerConfig) -> TriggerPolicy:
    return TriggerPolicy(labelled_drop_pp=p.accuracy_drop_pp, estimated_drop_pp=p.accuracy_drop_pp,
                         drift_threshold=p.drift_threshold, interval_s=p.interval_s,
                         debounce_s=float(p.extra.get("debounce_s", cfg.debounce_s)),
                         min_labelled=int(p.extra.get("min_labelled", 100)),
                         min_inferences=cfg.min_inferences)


def window(records: list[TelemetryPublic]) -> AccuracyWindow:
    return AccuracyWindow(
        inferences=sum(r.inference_count for r in records),
        labelled=sum(r.labelled_count for r in records),
        correct=sum(r.labelled_correct for r in records),
        estimated_sum=sum((r.estimated_accuracy or 0.0) * r.inference_count for r in records
                          if r.estimated_accuracy is not None))


def split_windows(records: list[TelemetryPublic], version: str | None, since: float | None,
                  min_inferences: int) -> tuple[AccuracyWindow, AccuracyWindow]:
    """(baseline, recent): the first and the last `min_inferences` of telemetry from `version`
    after `since`, in stream order."""
    mine = sorted((r for r in records if r.deployed_version == version and (since is None or r.window_end >= since)),
                  key=lambda r: r.seq)
    baseline: list[TelemetryPublic] = []
    recent: list[TelemetryPublic] = []
    for r in mine:
        if sum(x.inference_count for x in baseline) >= min_inferences:
            break
        baseline.append(r)
    for r in reversed(mine):
        if sum(x.inference_count for x in recent) >= min_inferences:
            break
        recent.append(r)
    return window(baseline), window(recent)


def _server_time(t: dt.datetime) -> float:
    """Seconds since the epoch of a time the server stored (UTC; SQLite returns it without a zone)."""
    return (t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)).timestamp()


class Controller:
    def __init__(self, store: FleetStore, config: ControllerConfig | None = None) -> None:
        self.store = store
        self.config = config or ControllerConfig()
        self.min_fresh_samples = (self.config.min_fresh_samples if self.config.min_fresh_samples is not None
                                  else store.settings.calibration_size)
        self._references: dict[tuple[str, str], str] = {}  # (base model, base version) -> version id
        self._sketches: dict[tuple[str, str], list[Sketch]] = {}  # (device, base model) -> newest uploads
        self._fell_back: dict[str, str] = {}  # device -> why it was sent back to the base version

    def run(self, stop: threading.Event) -> None:
        logger.info("controller: one pass every %.0f s", self.config.tick_s)
        while not stop.is_set():
            if self._is_leader():
                try:
                    self.tick()
                except Exception:  # a bad pass is logged; the next one starts clean
                    logger.exception("controller pass failed")
            stop.wait(self.config.tick_s)

    def _is_leader(self) -> bool:
        client = self.store.bus.redis
        if client is None:
            return True
        key = f"{self.store.settings.redis_prefix}{LOCK_KEY}"
        me = f"{id(self)}"
        ttl = int(self.config.lock_ttl_s * 1000)
        if client.set(key, me, nx=True, px=ttl):
            return True
        if client.get(key) in (me, me.encode()):
            client.pexpire(key, ttl)
            return True
        return False

    def tick(self, now: float | None = None) -> list[tuple[str, list[str]]]:
        """One pass: returns the (device, reasons) of the jobs it enqueued."""
        now = time.time() if now is None else now
        enqueued = []
        for device in self.store.list_devices():
            if device.revoked_at is not None or device.enrolled_at is None or device.pinned:
                continue
            reasons = self.check_device(device, now)
            if reasons:
                enqueued.append((device.id, reasons))
        for rollout in self.store.list_rollouts(state="active"):
            self.check_rollout(rollout)
        return enqueued

    # --- devices -----------------------------------------------------------------------------
    def check_device(self, device: DevicePublic, now: float) -> list[str]:
        policy = self.store.policy_for(device.cohort)
        tp = trigger_policy(policy, self.config)
        jobs = self.store.list_jobs(device_id=device.id, limit=1)
        last_job = jobs[0] if jobs else None
        active = last_job is not None and last_job.status in ("queued", "running")
        # Read again after the job: a job that finished since the pass began has already assigned its
        # version, and the pass must see that assignment, not start another "initial" retrain.
        device = self.store.get_device(device.id)
        sketches = self._recent_sketches(device.id, device.base_model)
        fresh = select_recent(sketches, 10**9, tp.drift_threshold)
        fresh_samples = sum(s.num_samples for s in fresh)
        newest = max(sketches, key=lambda s: (s.window_end, s.seq)) if sketches else None

        events = self.store.db.run(event_service.list_events, device.id, 200)  # newest first
        # Two clocks: `deployed_at` is the server's (the interval trigger compares it with `now`),
        # `windows_since` the agent's (telemetry windows carry the agent's times).
        reference, deployed_at, windows_since, base_version = None, None, None, ""
        if device.deployed_version:
            manifest = self.store.version_manifest(device.deployed_version)
            base_version = manifest.base_version
            if manifest.device_id is not None:  # a pruned version built for this device
                applied = self._applied(events, device.deployed_version)
                if applied is not None:
                    deployed_at, windows_since = _server_time(applied.received_at), float(applied.at)
                else:  # its `applied` event is still in the agent's outbox: all its telemetry is since
                    deployed_at = _server_time(self.store.get_version(device.deployed_version).created_at)
                ref = manifest.extra.get("reference_hist")
                reference = None if ref is None else np.asarray(ref, dtype=np.float64)
        telemetry = self.store.recent_telemetry(device.id, limit=500)
        baseline, recent = split_windows(telemetry, device.deployed_version, windows_since,
                                         self.config.min_inferences)
        latest_hist = newest.hist_counts if newest is not None else None
        if reference is not None and latest_hist is not None and reference.shape != latest_hist.shape:
            reference = None
        state = DeviceState(
            device_id=device.id, now=now, has_active_job=active,
            last_job_at=_server_time(last_job.created_at) if last_job else None,
            deployed_at=deployed_at if deployed_at is not None or not device.deployed_version else None,
            baseline=baseline, recent=recent, reference_hist=reference, latest_hist=latest_hist,
            has_sketches=fresh_samples >= self.min_fresh_samples)
        refused = last_job is not None and self._failed(events, last_job.version_id)
        if refused and state.reference_hist is None and last_job is not None and last_job.version_id:
            # Judge drift against the data the refused version was built from: new data, new try.
            ref = self.store.version_manifest(last_job.version_id).extra.get("reference_hist")
            if ref is not None and latest_hist is not None and np.shape(ref) == latest_hist.shape:
                state = replace(state, reference_hist=np.asarray(ref, dtype=np.float64))
        pending = (device.desired_version is not None and device.desired_version != device.deployed_version
                   and not self._failed(events, device.desired_version))
        state = replace(state, last_refused=refused, install_pending=pending)
        decision = decide(state, tp)
        if decision.drift is not None:
            self.store.record_drift(device.id, decision.drift)
        if deployed_at is not None and policy.extra.get("fallback_on_drift", True) and \
                self._fall_back(device, base_version, decision):
            # The re-prune waits until the device runs the base: an agent without the base on disk (a
            # pointer.json from before it kept one) shadow-evaluates against the serving, stale version.
            return []
        if not decision.enqueue:
            if decision.reasons and decision.blocked:
                logger.debug("device %s: %s (%s)", device.id, "; ".join(decision.reasons), decision.blocked,
                             extra={"device_id": device.id})
            return []
        if not device.deployed_version:
            return []  # nothing runs yet: the base version comes first
        key = idempotency_key(device.id, newest.seq if newest else None, base_version)
        reason = "; ".join(decision.reasons)
        if deployed_at is None and device.id in self._fell_back:  # on the base because of what it saw
            reason = f"{self._fell_back.pop(device.id)} (the base version served meanwhile)"
        job, created = self.store.enqueue_job(device.id, "retrain", key, reason)
        if created:
            logger.info("device %s: retrain job %s enqueued: %s", device.id, job.id, job.trigger_reason,
                        extra={"device_id": device.id, "job_id": job.id})
            return decision.reasons
        return []

    def _recent_sketches(self, device_id: str, base_model: str) -> list[Sketch]:
        """The device's newest SKETCH_WINDOW uploads without their reservoirs; only uploads newer
        than the last pass are read from the database."""
        key = (device_id, base_model)
        cached = self._sketches.get(key, [])
        after = cached[-1].seq if cached else None
        new = [without_samples(parse_sketch(r.data))
               for r in self.store.device_sketch_records(device_id, base_model, limit=SKETCH_WINDOW, after_seq=after)]
        cached = (cached + new)[-SKETCH_WINDOW:]
        self._sketches[key] = cached
        return cached

    def _fall_back(self, device: DevicePublic, base_version: str, decision: Decision) -> bool:
        """A version pruned for data the device no longer sees can be far worse than the base model:
        on drift or an accuracy drop, the base version serves until the re-prune lands. Whether it
        assigned the base now."""
        why = [r for r in decision.reasons if r.startswith(FALLBACK_REASONS)]
        if not why or device.desired_version != device.deployed_version:
            return False
        reference = self._reference_version(device.base_model, base_version)
        if reference is None or reference == device.deployed_version:
            return False
        self._fell_back[device.id] = "; ".join(why)
        self.store.set_desired_version(device.id, reference,
                                       reason=f"{'; '.join(why)}: the base version serves until the re-prune lands",
                                       actor="system:controller")
        logger.info("device %s: back to the base version %s while it is re-pruned (%s)", device.id, reference,
                    "; ".join(why), extra={"device_id": device.id})
        return True

    def _reference_version(self, base_model: str, base_version: str) -> str | None:
        """The registered dense int8 version of a base model (what every version is pruned from)."""
        key = (base_model, base_version)
        if key not in self._references:
            for v in self.store.list_versions(base_model=base_model, status="approved", limit=1000):
                if (v.device_id is None and v.base_version == base_version
                        and self.store.version_manifest(v.id).method.get("reference")):
                    self._references[key] = v.id
                    break
        return self._references.get(key)

    @staticmethod
    def _failed(events: list[DeviceEvent], version_id: str | None) -> bool:
        """Whether the device refused (or rolled back) that version."""
        return version_id is not None and any(e.version_id == version_id and e.kind in FAILED_KINDS for e in events)

    @staticmethod
    def _applied(events: list[DeviceEvent], version_id: str) -> DeviceEvent | None:
        for e in events:  # newest first
            if e.kind == "applied" and e.version_id == version_id:
                return e
        return None

    # --- rollouts ----------------------------------------------------------------------------
    def check_rollout(self, rollout: RolloutPublic) -> Action:
        drop_pp = float(rollout.thresholds.get("max_accuracy_drop_pp", 2.0))
        healthy = failed = 0
        device_ids = self.store.rollout_device_ids(rollout.id)
        since = _server_time(rollout.created_at)
        for device_id in device_ids:  # when the server received an event: a device's clock may be off
            events = [e for e in self.store.db.run(event_service.list_events, device_id, 200)
                      if e.version_id == rollout.version_id and _server_time(e.received_at) >= since]
            if any(e.kind in FAILED_KINDS for e in events):
                failed += 1
                continue
            if not any(e.kind == "applied" for e in events):
                continue
            telemetry = self.store.recent_telemetry(device_id, limit=500)
            before = [r for r in telemetry if r.deployed_version != rollout.version_id]
            after = [r for r in telemetry if r.deployed_version == rollout.version_id]
            w_after = window(after[: 1000])
            if w_after.inferences < self.config.min_inferences:
                continue
            acc_after = w_after.labelled_accuracy or w_after.estimated_accuracy
            w_before = window(before)
            acc_before = w_before.labelled_accuracy or w_before.estimated_accuracy
            if acc_after is not None and acc_before is not None and (acc_before - acc_after) * 100 > drop_pp:
                failed += 1
            else:
                healthy += 1
        action = rollout_action(Outcomes(len(device_ids), healthy, failed), rollout.thresholds)
        if action is Action.ABORT:
            self.store.abort_rollout(rollout.id, reason=f"{failed} device(s) regressed or rolled back")
        elif action is Action.ADVANCE:
            advanced = self.store.advance_rollout(rollout.id, reason=f"{healthy} device(s) healthy")
            if advanced.state == "completed":  # the dispatcher moves MLflow's `champion` alias to it
                self.store.enqueue_job(None, "promote", f"promote:{rollout.id}:{rollout.version_id}",
                                       f"rollout {rollout.id} to cohort {rollout.cohort} completed")
        return action


def run_controller(stop: threading.Event | None = None, config: ControllerConfig | None = None) -> None:
    """`qsae-fleet controller`."""
    store = FleetStore.from_settings()
    try:
        Controller(store, config).run(stop or threading.Event())
    finally:
        store.close()
