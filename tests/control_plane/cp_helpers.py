"""Helpers and constants shared by the control-plane tests."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from fastapi.testclient import TestClient

from control_plane.services.store import FleetStore
from qsae_shared.manifest import ConfidenceProfile, FileEntry, Manifest, PolicyFloors
from qsae_shared.sketch import SketchBuilder

BASE_MODEL = "fmnist-cnn"
REDIS_URL = os.environ.get("QSAE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def redis_key_prefix(name: str) -> Iterator[str]:
    """Yields a fresh key prefix `<name>-<random>:` on the test Redis; its keys are deleted afterwards."""
    prefix = f"{name}-{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        r = redis.Redis.from_url(REDIS_URL)
        for k in r.scan_iter(match=prefix + "*"):
            r.delete(k)
        r.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Dev:
    id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)


def make_device(client: TestClient, keys: dict[str, str], name: str | None = None,
                labels: dict[str, str] | None = None) -> Dev:
    r = client.post("/api/v1/devices", headers=bearer(keys["operator"]),
                    json={"name": name or f"dev-{uuid.uuid4().hex[:8]}", "labels": labels or {},
                          "base_model": BASE_MODEL})
    assert r.status_code == 201, r.text
    e = client.post("/api/v1/enroll", json={"enrollment_token": r.json()["enrollment_token"],
                                            "agent_version": "test"})
    assert e.status_code == 200, e.text
    return Dev(e.json()["device_id"], e.json()["device_token"])


def record(seq: int, **kw: Any) -> dict[str, Any]:
    now = time.time()
    r = {"uuid": str(uuid.uuid4()), "seq": seq, "window_start": now - 60, "window_end": now,
         "inference_count": 100, "labelled_count": 10, "labelled_correct": 9, "estimated_accuracy": 0.9,
         "mean_confidence": 0.85, "latency_p50_ms": 0.2, "latency_p95_ms": 0.4, "deployed_version": None,
         "outbox_dropped": 0}
    r.update(kw)
    return r


def make_sketch(device_id: str, seq: int = 0, base_model: str = BASE_MODEL, n: int = 8,
                channels: int = 4, hw: int = 6) -> bytes:
    edges = np.tile(np.linspace(-1, 3, 9, dtype=np.float32), (channels, 1))
    b = SketchBuilder(device_id, base_model, edges, max_bytes=64 * 1024, seed=seq)
    b.seq = seq
    rng = np.random.default_rng(seq)
    b.update(rng.random((n, channels, hw, hw)).astype(np.float32), rng.dirichlet(np.ones(10), n), now=1.0 + seq)
    return b.emit()


def stub_manifest(version_id: str, device_id: str | None, artifact: bytes, sha256: str, kl: float,
                  compression: float, base_model: str = BASE_MODEL, stem_shape: tuple[int, ...] = (4, 6, 6)) -> Manifest:
    """An unsigned manifest for `artifact` stored as the one weights file `model.bin`, with placeholder
    preprocessing, histogram edges and confidence profile."""
    return Manifest(
        version_id=version_id, base_model=base_model, base_version="1", device_id=device_id,
        created_at=time.time(), preprocessing={"mean": 0.286, "std": 0.353}, input_name="input",
        output_name="logits", stem_output_name="stem", stem_shape=list(stem_shape),
        hist_edges=[[0.0, 1.0, 2.0]] * 4,
        confidence_profile=ConfidenceProfile(bin_edges=[0.0, 0.5, 1.0], accuracy=[0.5, 0.9],
                                             reference_hist=[0.2, 0.8]),
        floors=PolicyFloors(), method={"criterion": "qsae"},
        metrics={"kl": kl, "compression_ratio": compression},
        files=[FileEntry(name="model.bin", role="weights", size=len(artifact), sha256=sha256)])


def make_version(store: FleetStore, version_id: str, device_id: str | None, payload: bytes = b"model-bytes",
                 compression: float = 12.0, kl: float = 0.01, base_model: str = BASE_MODEL) -> str:
    """Store an artifact and register an (unsigned -> server-signed) version; returns its id."""
    artifact = payload + version_id.encode()
    sha = store.put_artifact(artifact)
    m = stub_manifest(version_id, device_id, artifact, sha, kl=kl, compression=compression, base_model=base_model)
    return store.register_model_version(m, mlflow_name=base_model, mlflow_version="3").id
