"""Helpers shared by the reliability and security tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from qsae_shared.sketch import SketchBuilder
from tests.control_plane.cp_helpers import Dev, bearer

ROOT = Path(__file__).resolve().parents[2]
BASE_MODEL = "fmnist-cnn"


def new_device(client: Any, operator_key: str, base_model: str = BASE_MODEL) -> Dev:
    """Create a device (operator API) and enroll it; works with TestClient and httpx.Client."""
    r = client.post("/api/v1/devices", headers=bearer(operator_key),
                    json={"name": f"rel-{uuid.uuid4().hex[:10]}", "labels": {}, "base_model": base_model})
    assert r.status_code == 201, r.text
    e = client.post("/api/v1/enroll", json={"enrollment_token": r.json()["enrollment_token"], "agent_version": "t"})
    assert e.status_code == 200, e.text
    return Dev(e.json()["device_id"], e.json()["device_token"])


def sketch(device_id: str, seq: int = 0, channels: int = 4, hw: int = 6, n: int = 8, bins: int = 8,
           max_bytes: int = 64 * 1024) -> bytes:
    """A valid sketch upload (wire format) of the given dimensions."""
    edges = np.tile(np.linspace(-1, 3, bins + 1, dtype=np.float32), (channels, 1))
    b = SketchBuilder(device_id, BASE_MODEL, edges, max_bytes=max_bytes, seed=seq)
    b.seq = seq
    rng = np.random.default_rng(seq)
    b.update(rng.random((n, channels, hw, hw)).astype(np.float32), rng.dirichlet(np.ones(10), n), now=1.0 + seq)
    return b.emit()
