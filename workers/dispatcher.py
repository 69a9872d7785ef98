"""The dispatcher: claims jobs from the jobs table (the durable queue) and runs them as Ray tasks.

    qsae-fleet worker            # local Ray, or the cluster in FLEET_RAY_ADDRESS

Ray tasks only compute: they get the base checkpoint and the device's sketches, and return the
artifact bytes, the unsigned manifest and the metrics. The dispatcher alone writes: artifact files,
the model version (signed by the control plane), the MLflow run and registered version, the device's
desired version, the job's status. A job whose worker dies is retried by Ray; a job that fails for
good is failed with its error. A job that runs twice registers one version (checked by job id).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from control_plane.errors import ConflictError
from control_plane.schemas import JobPublic, PolicyPublic
from control_plane.services import FleetStore
from qsae_shared.manifest import Manifest
from qsae_shared.sketch import merge_sketches, parse_sketch, select_recent
from workers.tracking import RunRecord, Tracker, alias_for_device

logger = logging.getLogger(__name__)

JOB_KINDS = ("retrain", "train_base", "promote")


@dataclass
class DispatcherConfig:
    max_parallel: int = 2  # Ray tasks in flight at once (one CPU each)
    poll_s: float = 2.0  # wait between claims when idle (Redis wake-ups cut it short)
    heartbeat_s: float = 10.0  # how often running jobs renew their lease and report progress
    sketch_window: int = 40  # newest uploads considered for one retrain
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


def db_unavailable(exc: BaseException) -> bool:
    """A lost database (restarting, unreachable): wait and retry rather than die or fail the job."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and bool(exc.connection_invalidated))


def worker_policy(p: PolicyPublic) -> dict[str, Any]:
    """The workers' Policy fields from the control plane's policy (method knobs live in `extra`)."""
    known = {"mode", "target_compression", "criteria", "compute", "search_steps"}
    fields_ = {k: v for k, v in p.extra.items() if k in known}
    if "criteria" in fields_:
        fields_["criteria"] = tuple(fields_["criteria"])
    return {"kl_budget": p.kl_budget, "min_compression": p.min_compression, **fields_}


# --- Ray tasks: pure computation, plain results --------------------------------------------------
def _retrain_task(checkpoint: Any, sketch_blobs: list[bytes], policy_fields: dict[str, Any],
                  device_id: str, fallbacks: dict[str, bytes], calibration_size: int) -> dict[str, Any]:
    import torch

    from workers.policy import Policy
    from workers.retrain import retrain

    torch.set_num_threads(1)
    sketches = [parse_sketch(b) for b in sketch_blobs]
    result = retrain(checkpoint, sketches, Policy(**policy_fields), device_id=device_id,
                     fallbacks=fallbacks, calibration_size=calibration_size)
    merged = merge_sketches(sketches, calibration_size)
    return {"manifest": result.manifest.to_json(), "files": result.files, "metrics": result.metrics,
            "candidates": result.candidates, "meets_policy": result.meets_policy,
            "method": result.chosen.method, "seconds": result.seconds,
            "reference_hist": merged.hist_counts.tolist()}


def _train_base_task(checkpoint: Any) -> dict[str, Any]:
    """checkpoint: a Checkpoint, or the cache folder to load (or train) the pinned CNN in."""
    import torch

    from workers.retrain import export_base
    from workers.training import load_base

    torch.set_num_threads(max(1, int(os.environ.get("FLEET_TRAIN_THREADS", "1"))))
    ck = load_base(checkpoint) if isinstance(checkpoint, str) else checkpoint
    result = export_base(ck)
    return {"manifest": result.manifest.to_json(), "files": result.files, "metrics": result.metrics,
            "train_metrics": ck.metrics, "train_config": ck.config, "candidates": [],
            "meets_policy": True, "method": "int8", "seconds": result.seconds + ck.seconds,
            "checkpoint": ck.to_bytes()}


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers at nice 15, so on a shared machine any other work starves the
    # retrains (they ran 2-5x slower than alone under the demo's simulated fleet). The retrains are
    # this process's real work: run them at normal priority unless told otherwise.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        from workers.runtime_choice import cache_file

        # Local workers share this machine's compute choices, wherever Ray starts them.
        os.environ.setdefault("FLEET_COMPUTE_CACHE", str(cache_file().resolve()))
        ray.init(num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False,
                 object_store_memory=256 * 2**20, log_to_driver=False)


@dataclass
class _Inflight:
    job: JobPublic
    ref: Any
    started: float
    context: dict[str, Any]
    last_beat: float = 0.0


class Dispatcher:
    def __init__(self, store: FleetStore, tracker: Tracker, config: DispatcherConfig | None = None,
                 models_dir: Path | None = None, checkpoint: Any = None) -> None:
        """checkpoint: the base model to use instead of the cached pinned CNN (tests, small runs)."""
        import ray

        self.ray = ray
        self.store = store
        self.tracker = tracker
        self.config = config or DispatcherConfig()
        self.models_dir = Path(models_dir or Path(store.settings.state_dir) / "models")
        self._retrain = ray.remote(num_cpus=1, max_retries=2)(_retrain_task)
        self._train_base = ray.remote(num_cpus=1, max_retries=1)(_train_base_task)
        self._checkpoint = checkpoint
        self._checkpoint_ref_cache: Any = None
        self.inflight: dict[Any, _Inflight] = {}
        self._unsubmitted: list[JobPublic] = []  # claimed, not started: the database went away meanwhile

    # --- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        logger.info("dispatcher %s: claiming %s jobs, %d in parallel", self.config.worker_name,
                    "/".join(JOB_KINDS), self.config.max_parallel)
        while not stop.is_set():
            try:
                claimed = self._claim_up_to_capacity()
                if self.inflight:
                    refs = [f.ref for f in self.inflight.values()]
                    ready, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
                    for ref in ready:
                        self._finish(self.inflight[ref])
                        del self.inflight[ref]  # only once recorded: a lost database keeps the result
                    self._heartbeat()
                elif not claimed:
                    self.store.wait_for_work(self.config.poll_s)
            except Exception as exc:
                if not db_unavailable(exc):
                    raise
                logger.warning("database unavailable (%s); %d job(s) in flight wait, retrying in %.0f s",
                               type(exc).__name__, len(self.inflight), self.config.poll_s)
                stop.wait(self.config.poll_s)

    def run_until_idle(self, timeout_s: float = 600.0) -> int:
        """Run jobs until the queue is empty and nothing is in flight (tests, benchmarks)."""
        done, deadline = 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._claim_up_to_capacity()
            if not self.inflight:
                return done
            ready, _ = self.ray.wait([f.ref for f in self.inflight.values()], num_returns=1, timeout=1.0)
            for ref in ready:
                self._finish(self.inflight.pop(ref))
                done += 1
            self._heartbeat()
        raise TimeoutError(f"jobs still running after {timeout_s} s")

    def _claim_up_to_capacity(self) -> int:
        claimed = 0
        while len(self.inflight) < self.config.max_parallel:
            # a job claimed while the database went away is submitted before any new claim
            job = (self._unsubmitted.pop(0) if self._unsubmitted
                   else self.store.claim_next_job(self.config.worker_name, kinds=JOB_KINDS))
            if job is None:
                break
            claimed += 1
            try:
                self._submit(job)
            except Exception as exc:  # a job we cannot even start fails with the reason, and we go on
                if db_unavailable(exc):
                    if all(f.job.id != job.id for f in self.inflight.values()):
                        self._unsubmitted.append(job)
                    raise
                logger.exception("job %s: cannot start", job.id)
                self.store.fail_job(job.id, f"cannot start: {exc}", retry=False)
        return claimed

    def _heartbeat(self) -> None:
        now = time.monotonic()
        for ref, f in list(self.inflight.items()):
            if now - f.last_beat >= self.config.heartbeat_s:
                f.last_beat = now
                elapsed = now - f.started
                try:  # renews the lease; progress is an estimate against the usual retrain (~10 s)
                    self.store.update_job_progress(f.job.id, min(0.9, 0.1 + elapsed / 20),
                                                   f"running on Ray for {elapsed:.0f} s")
                except ConflictError:  # an operator cancelled it: stop the task, keep serving others
                    logger.info("job %s was cancelled; stopping its Ray task", f.job.id,
                                extra={"job_id": f.job.id})
                    self.inflight.pop(ref)
                    self.ray.cancel(ref, force=True)

    # --- submit ------------------------------------------------------------------------------
    def _checkpoint_ref(self) -> Any:
        from workers.training import load_base

        if self._checkpoint_ref_cache is None:
            ck, source = self._checkpoint, "the dispatcher's caller"
            if ck is None:
                ck, source = self._fleet_base(), "the artifact store"
            if ck is None:
                ck, source = load_base(self.models_dir), str(self.models_dir)
            self._check_base(ck, source)
            self._checkpoint_ref_cache = self.ray.put(ck)
        return self._checkpoint_ref_cache

    def _fleet_base(self) -> Any:
        """The checkpoint the fleet's latest base version was exported from, as its base job kept
        it in the artifact store (None before any base job has, or if the file is gone)."""
        from workers.training import Checkpoint

        for v in self.store.list_versions(fleet_wide=True):  # newest first
            if v.job_id is None:
                continue
            sha = (self.store.get_job(v.job_id).result or {}).get("checkpoint_sha256")
            if not sha:
                continue
            path = self.store.artifact_path(sha)
            if path is not None:
                logger.info("base model restored from the artifact store (%s, base version %s)", sha[:12], v.id)
                return Checkpoint.from_bytes(path.read_bytes(), source=f"artifact {sha}")
        return None

    def _check_base(self, ck: Any, source: str) -> None:
        """Refuse to prune from another network than the base the fleet runs. A base version id
        names the spec and the training config, not the weights, and the same config trained on
        another CPU is another network (float rounding differs between CPUs' kernels: 92.36 %
        against 92.30 % clean, docs/method.md): its later layers would be calibrated on the stem
        outputs of the devices' network. Compared on the stem, int8-rounded as every base
        artifact stores it."""
        import torch

        from workers.errors import CheckpointError
        from workers.quantization import round_trip
        from workers.retrain import pruned_from_artifact

        stem_end = ck.spec["stem_end"]
        mine = ck.network()[:stem_end].state_dict()
        for v in self.store.list_versions(base_model=ck.name, fleet_wide=True):
            manifest = self.store.version_manifest(v.id)
            path = self.store.artifact_path(manifest.files[0].sha256)
            if manifest.base_version != ck.base_version or path is None:
                continue
            theirs = pruned_from_artifact(path.read_bytes()).net[:stem_end].state_dict()
            if not all(torch.allclose(round_trip(t) if k.endswith("weight") else t, theirs[k], atol=1e-6)
                       for k, t in mine.items()):
                raise CheckpointError(
                    f"the base model this dispatcher loaded ({ck.name} {ck.base_version}, from {source}) "
                    f"is not the network "
                    f"of the fleet's base version {v.id}: same config, other weights (trained again, on "
                    "another machine?). Restore the checkpoint the fleet was built from; pruning "
                    "from this one would calibrate its layers on the devices' stem outputs")

    def _submit(self, job: JobPublic) -> None:
        started = time.monotonic()
        if job.kind == "promote":  # no Ray task: one MLflow call
            self._promote(job)
            return
        if job.kind == "train_base":
            source = self._checkpoint if self._checkpoint is not None else str(self.models_dir)
            ref = self._train_base.remote(source)
            self.inflight[ref] = _Inflight(job, ref, started, {}, started)
            self.store.update_job_progress(job.id, 0.05, "training or loading the base model")
            return
        assert job.device_id is not None
        existing = [v for v in self.store.list_versions(device_id=job.device_id) if v.job_id == job.id]
        if existing:  # this job already registered its version before a crash: finish it
            self.store.complete_job(job.id, version_id=existing[0].id, result={"note": "already registered"})
            return
        device = self.store.get_device(job.device_id)
        policy = self.store.policy_for(device.cohort)
        settings = self.store.settings
        records = self.store.device_sketch_records(job.device_id, device.base_model,
                                                   limit=self.config.sketch_window)
        if not records:
            self.store.fail_job(job.id, "the device has uploaded no sketches yet", retry=False)
            return
        parsed = [parse_sketch(r.data) for r in records]
        chosen = select_recent(parsed, settings.calibration_size, policy.drift_threshold)
        blobs = [r.data for r, s in zip(records, parsed, strict=True) if any(s is c for c in chosen)]
        fallbacks = {}
        if device.deployed_version:
            manifest = self.store.version_manifest(device.deployed_version)
            if manifest.device_id is not None:  # a pruned version: keep it as a candidate
                path = self.store.artifact_path(manifest.files[0].sha256)
                if path is not None:
                    fallbacks["deployed"] = path.read_bytes()
        ref = self._retrain.remote(self._checkpoint_ref(), blobs, worker_policy(policy), job.device_id,
                                   fallbacks, settings.calibration_size)
        context = {"policy": policy, "sketch_seqs": sorted(s.seq for s in chosen),
                   "window": (min(s.window_start for s in chosen), max(s.window_end for s in chosen))}
        self.inflight[ref] = _Inflight(job, ref, started, context, started)
        self.store.update_job_progress(job.id, 0.1, f"pruning from {len(blobs)} sketches")

    def _promote(self, job: JobPublic) -> None:
        """A completed rollout's version becomes the registered model's `champion`."""
        version_id = job.idempotency_key.split(":", 2)[2]
        v = self.store.get_version(version_id)
        if v.mlflow_name is None or v.mlflow_version is None:
            self.store.fail_job(job.id, f"version {version_id} is not registered in MLflow", retry=False)
            return
        self.tracker.set_alias(v.mlflow_name, "champion", v.mlflow_version)
        self.store.complete_job(job.id, version_id=v.id, result={"alias": "champion",
                                                                "mlflow_version": v.mlflow_version})
        logger.info("job %s: %s v%s is the champion (%s)", job.id, v.mlflow_name, v.mlflow_version,
                    job.trigger_reason)

    # --- finish ------------------------------------------------------------------------------
    def _finish(self, f: _Inflight) -> None:
        job = f.job
        try:
            result = self.ray.get(f.ref)
        except Exception as exc:
            logger.warning("job %s (device %s) failed: %s", job.id, job.device_id, exc)
            self.store.fail_job(job.id, f"{type(exc).__name__}: {exc}"[:2000], retry=True)
            return
        try:
            if job.kind == "train_base":
                self._finish_base(job, result)
            else:
                self._finish_retrain(job, result, f.context)
        except Exception as exc:
            if db_unavailable(exc):
                raise  # keep the result in flight: recorded once the database is back
            logger.exception("job %s: recording the result failed", job.id)
            self.store.fail_job(job.id, f"recording the result failed: {exc}"[:2000], retry=True)

    def _store_files(self, files: dict[str, bytes]) -> None:
        for data in files.values():
            self.store.put_artifact(data)

    def _finish_base(self, job: JobPublic, result: dict[str, Any]) -> None:
        manifest = Manifest.from_json(result["manifest"])
        self._store_files(result["files"])
        # The fp32 network every later retrain prunes from, kept with the fleet's artifacts: a
        # dispatcher that starts elsewhere restores it instead of training another one.
        checkpoint_sha = self.store.put_artifact(result["checkpoint"])
        run_id = self.tracker.log_run(RunRecord(
            run_name=f"base-{manifest.base_model}",
            params={"method": "int8", **{f"train.{k}": v for k, v in result["train_config"].items()
                                         if not isinstance(v, dict)}},
            metrics={**{f"test_accuracy.{k}": v for k, v in result["train_metrics"].items()},
                     **{k: v for k, v in result["metrics"].items()}},
            tags={"kind": "base", "job_id": str(job.id), "base_version": manifest.base_version},
            artifacts={"manifest.json": manifest.to_json(), "checkpoint.pt": result["checkpoint"],
                       **result["files"]}))
        mlflow_version = self.tracker.register_version(
            manifest.base_model, run_id, {"kind": "base", "base_version": manifest.base_version},
            aliases=["base", "champion"])
        v = self.store.register_model_version(manifest, mlflow_name=manifest.base_model,
                                              mlflow_version=mlflow_version, mlflow_run_id=run_id,
                                              status="approved", job_id=job.id)
        assigned = 0
        for d in self.store.list_devices(base_model=manifest.base_model):
            if d.desired_version is None and not d.pinned and d.revoked_at is None:
                self.store.set_desired_version(d.id, v.id, reason=f"base version (job {job.id})")
                assigned += 1
        self.store.complete_job(job.id, version_id=v.id, result={**result["metrics"], "assigned": assigned,
                                                                 "checkpoint_sha256": checkpoint_sha})
        logger.info("job %s: base version %s registered (MLflow %s v%s), assigned to %d devices",
                    job.id, v.id, manifest.base_model, mlflow_version, assigned)

    def _finish_retrain(self, job: JobPublic, result: dict[str, Any], ctx: dict[str, Any]) -> None:
        device_id = job.device_id
        assert device_id is not None
        policy: PolicyPublic = ctx["policy"]
        if result["method"].startswith("fallback:"):
            self.store.complete_job(job.id, result={**result["metrics"], "decision": "kept the deployed version",
                                                    "method": result["method"]})
            logger.info("job %s device %s: the deployed version stays the best candidate", job.id, device_id)
            return
        manifest = Manifest.from_json(result["manifest"])
        floors = {k: type(getattr(manifest.floors, k))(policy.extra[k])
                  for k in ("shadow_agreement_min", "rollback_accuracy_drop_pp", "rollback_window")
                  if k in policy.extra}  # the cohort's policy may set the device-side floors
        manifest = replace(manifest, floors=replace(manifest.floors, **floors),
                           extra={**manifest.extra, "reference_hist": result["reference_hist"],
                                  "job_id": job.id, "trigger": job.trigger_reason})
        self._store_files(result["files"])
        metrics = dict(result["metrics"])
        method = manifest.method
        run = RunRecord(
            run_name=f"retrain-{device_id}-job{job.id}",
            params={"criterion": method.get("criterion"), "recovery": method.get("recovery"),
                    "method": method.get("method"), **{f"policy.{k}": v for k, v in method["policy"].items()}},
            metrics={k: float(v) for k, v in metrics.items()},
            tags={"device_id": device_id, "trigger": job.trigger_reason[:500], "job_id": str(job.id),
                  "sketch_window": f"{ctx['window'][0]:.0f}-{ctx['window'][1]:.0f}",
                  "sketch_seqs": ",".join(map(str, ctx["sketch_seqs"]))[:500]},
            artifacts={"manifest.json": manifest.to_json(), **result["files"]},
            candidates=[RunRecord(run_name=f"candidate-{c.get('method', '?')}",
                                  params={k: v for k, v in c.items() if isinstance(v, str)},
                                  metrics={k: float(v) for k, v in c.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and v == v})
                        for c in result["candidates"]])
        run_id = self.tracker.log_run(run)
        deployable = (result["meets_policy"] and metrics.get("kl", 1e9) <= policy.kl_budget
                      and metrics.get("compression_ratio", 0) >= policy.min_compression)
        aliases = [alias_for_device(device_id)] if deployable and policy.auto_deploy else ["challenger"]
        mlflow_version = self.tracker.register_version(
            manifest.base_model, run_id,
            {"device_id": device_id, "mask_hash": manifest.files[0].sha256[:16], "job_id": str(job.id)},
            aliases=aliases)
        v = self.store.register_model_version(manifest, mlflow_name=manifest.base_model,
                                              mlflow_version=mlflow_version, mlflow_run_id=run_id,
                                              status="candidate", job_id=job.id)
        if deployable and policy.auto_deploy:
            self.store.set_desired_version(device_id, v.id, reason=f"job {job.id}: {job.trigger_reason}")
            decision = "deployed"
        elif deployable:
            decision = "awaiting a rollout"
        else:
            decision = "rejected by the policy"
            self.store.set_version_status(v.id, "rejected")
        self.store.complete_job(job.id, version_id=v.id, result={**metrics, "decision": decision,
                                                                "method": result["method"]})
        logger.info("job %s device %s: version %s %.1fx kl %.4f -> %s", job.id, device_id, v.id,
                    metrics.get("compression_ratio", 0), metrics.get("kl", 0), decision)


def run_dispatcher(stop: threading.Event | None = None, config: DispatcherConfig | None = None) -> None:
    """`qsae-fleet worker`: the dispatcher process."""
    from control_plane.settings import get_settings

    settings = get_settings()
    init_ray(settings.ray_address)
    store = FleetStore.from_settings(settings)
    tracker = Tracker(settings.mlflow_tracking_uri, Path(settings.state_dir) / "mlartifacts")
    Dispatcher(store, tracker, config).run(stop or threading.Event())

