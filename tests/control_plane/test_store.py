"""FleetStore, the Python API the dispatcher and controller call: the job queue (idempotency,
one active job per device, concurrent claims, leases, retries), sketches, artifacts, versions and
desired versions."""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import update

from control_plane.db.models import Job
from control_plane.errors import ConflictError, NotFoundError, ValidationFailedError
from control_plane.services.store import FleetStore
from qsae_shared.manifest import Manifest
from qsae_shared.signing import verify_manifest
from tests.control_plane.cp_helpers import BASE_MODEL, make_device, make_sketch, make_version


def test_enqueue_is_idempotent_and_one_active_per_device(client, keys, store):
    a, b = make_device(client, keys), make_device(client, keys)
    job, created = store.enqueue_job(a.id, "retrain", "a:seq5:base1", "drift 0.3 > 0.1")
    assert created and job.status == "queued" and job.trigger_reason == "drift 0.3 > 0.1"
    same, created = store.enqueue_job(a.id, "retrain", "a:seq5:base1", "again")
    assert not created and same.id == job.id
    other_key, created = store.enqueue_job(a.id, "retrain", "a:seq6:base1", "accuracy drop")
    assert not created and other_key.id == job.id  # the device already has an active job
    jb, created = store.enqueue_job(b.id, "retrain", "b:seq1:base1", "interval")
    assert created and jb.id != job.id
    with pytest.raises(NotFoundError):
        store.enqueue_job("d-nope", "retrain", "x", "y")


def test_claim_progress_complete(client, keys, store):
    d = make_device(client, keys)
    job, _ = store.enqueue_job(d.id, "retrain", "k1", "manual")
    claimed = store.claim_next_job("worker-1")
    assert claimed.id == job.id and claimed.status == "running" and claimed.attempts == 1
    assert store.claim_next_job("worker-2") is None
    p = store.update_job_progress(job.id, 0.5, "tau search")
    assert p.progress == 0.5 and p.progress_message == "tau search"
    v = make_version(store, "v-job", d.id)
    done = store.complete_job(job.id, version_id=v, result={"kl": 0.01})
    assert done.status == "succeeded" and done.version_id == v and done.progress == 1.0
    assert store.complete_job(job.id, version_id=v).status == "succeeded"  # a retried completion is harmless
    with pytest.raises(ConflictError):
        store.update_job_progress(job.id, 0.9)
    _, created = store.enqueue_job(d.id, "retrain", "k2", "drift")
    assert created  # the device's previous job is finished


def test_failures_retry_then_fail(client, keys, store):
    d = make_device(client, keys)
    job, _ = store.enqueue_job(d.id, "retrain", "kf", "manual", max_attempts=2)
    store.claim_next_job("w")
    assert store.fail_job(job.id, "ray worker died").status == "queued"
    assert store.claim_next_job("w").attempts == 2
    failed = store.fail_job(job.id, "ray worker died again")
    assert failed.status == "failed" and "again" in failed.error
    assert store.claim_next_job("w") is None


def test_expired_lease_requeues(client, keys, store):
    d = make_device(client, keys)
    job, _ = store.enqueue_job(d.id, "retrain", "kl", "manual")
    store.claim_next_job("w-dead")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=store.settings.job_lease_s + 5)
    store.db.run(lambda s: s.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=old)))
    again = store.claim_next_job("w-alive")
    assert again.id == job.id and again.worker == "w-alive" and again.attempts == 2


def test_cancelled_job_tells_the_worker_to_stop(client, keys, store):
    d = make_device(client, keys)
    job, _ = store.enqueue_job(d.id, "retrain", "kc", "manual")
    store.claim_next_job("w")
    client.post(f"/api/v1/jobs/{job.id}/cancel", headers={"Authorization": f"Bearer {keys['operator']}"})
    with pytest.raises(ConflictError, match="cancelled"):
        store.update_job_progress(job.id, 0.3)


def test_concurrent_claims_never_share_a_job(client, keys, settings):
    devs = [make_device(client, keys) for _ in range(6)]
    stores = [FleetStore(settings) for _ in range(3)]
    for i, d in enumerate(devs):
        stores[0].enqueue_job(d.id, "retrain", f"c{i}", "test")
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(s: FleetStore, name: str) -> None:
        while (j := s.claim_next_job(name)) is not None:
            with lock:
                claimed.append(j.id)

    threads = [threading.Thread(target=worker, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 6


def test_wait_for_work_wakes_on_enqueue(client, keys, store):
    d = make_device(client, keys)
    store.wait_for_work(0.01)  # drain stale wake-ups
    threading.Timer(0.3, lambda: store.enqueue_job(d.id, "retrain", "kw", "test")).start()
    t0 = time.monotonic()
    assert store.wait_for_work(10) is True
    assert time.monotonic() - t0 < 5


def test_device_sketches_returns_raw_bytes_oldest_first(client, keys, store):
    d = make_device(client, keys)
    blobs = [make_sketch(d.id, seq=s) for s in (2, 0, 1)]
    for b in blobs:
        client.post(f"/api/v1/devices/{d.id}/sketches", headers=d.auth, content=b)
    got = store.device_sketches(d.id, BASE_MODEL)
    assert got == [blobs[1], blobs[2], blobs[0]]
    assert store.device_sketches(d.id, BASE_MODEL, limit=2) == [blobs[2], blobs[0]]
    assert store.device_sketches(d.id, "other-model") == []


def test_register_signs_checks_files_and_is_idempotent(client, keys, store):
    d = make_device(client, keys)
    vid = make_version(store, "v-reg", d.id, compression=9.5, kl=0.03)
    v = store.get_version(vid)
    assert v.compression_ratio == 9.5 and v.kl == 0.03 and v.mlflow_name == BASE_MODEL and v.status == "candidate"
    m = store.version_manifest(vid)
    verify_manifest(m, store.signing_public_keys())
    assert store.register_model_version(m).id == vid  # same manifest again
    with pytest.raises(ConflictError):
        store.register_model_version(replace(m, signature="", metrics={"kl": 0.5, "compression_ratio": 2.0}))
    missing = replace(m, version_id="v-missing", signature="",
                      files=[replace(m.files[0], sha256="ab" * 32)])
    with pytest.raises(ValidationFailedError, match="not in the artifact store"):
        store.register_model_version(missing)
    with pytest.raises(ValidationFailedError, match="invalid manifest"):
        store.register_model_version(b"{not json")
    forged = replace(m, version_id="v-forged", signature=m.signature)
    with pytest.raises(ValidationFailedError, match="signature"):
        store.register_model_version(forged)


def test_set_desired_version_checks_the_version(client, keys, store):
    d = make_device(client, keys)
    with pytest.raises(NotFoundError):
        store.set_desired_version(d.id, "v-unknown", reason="x")
    other_model = make_version(store, "v-other-model", None, base_model="other-cnn")
    with pytest.raises(ConflictError, match="base model"):
        store.set_desired_version(d.id, other_model, reason="x")
    v = make_version(store, "v-ok", d.id)
    dev = store.set_desired_version(d.id, v, reason="job 1")
    assert dev.desired_version == v and dev.desired_reason == "job 1"
    assert Manifest.from_dict(client.get(f"/api/v1/devices/{d.id}/assignment", headers=d.auth).json()["manifest"])


def test_artifacts_are_content_addressed(store, tmp_path):
    sha = store.put_artifact(b"hello")
    assert sha == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    assert store.put_artifact(f) == sha and store.artifact_path(sha).read_bytes() == b"hello"
    assert store.artifact_path("0" * 64) is None


def test_policy_and_drift_for_the_controller(client, keys, store):
    d = make_device(client, keys, labels={"cohort": "plant-b"})
    assert store.policy_for("plant-b").name == "default"
    client.put("/api/v1/policies/plant-b", headers={"Authorization": f"Bearer {keys['operator']}"},
               json={"kl_budget": 0.1, "min_compression": 5, "accuracy_drop_pp": 1, "drift_threshold": 0.05,
                     "interval_s": 600})
    assert store.policy_for("plant-b").kl_budget == 0.1
    store.record_drift(d.id, 0.5)
    client.post(f"/api/v1/devices/{d.id}/telemetry", headers=d.auth,
                json={"records": [{"uuid": "u", "seq": 0, "window_start": 0, "window_end": 1, "inference_count": 5}]})
    got = store.get_device(d.id)
    assert got.drift_score == 0.5 and got.state == "drifting"
    assert [t.seq for t in store.recent_telemetry(d.id)] == [0]
