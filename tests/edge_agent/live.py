"""A real control plane on 127.0.0.1 for the agent's tests: uvicorn in a subprocess on a fresh
SQLite state folder, plus the worker-side data-access layer (FleetStore) to publish versions."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from qsae_shared.manifest import Manifest
from workers.demo import free_port, stop_process, wait_healthy

ADMIN_KEY = "qk_edge_agent_tests_admin_key_0001"
BASE_MODEL = "tiny-cnn"  # tests.tiny_model: what the kit fixture exports
ROOT = Path(__file__).resolve().parents[2]


class LiveControlPlane:
    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FLEET_STATE_DIR": str(state_dir), "FLEET_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
                    "FLEET_AUTO_MIGRATE": "true", "FLEET_POLL_INTERVAL_S": "1", "FLEET_RATE_LIMIT_PER_MINUTE": "0",
                    "FLEET_LOG_LEVEL": "WARNING", "FLEET_REDIS_URL": ""}
        self.env.pop("FLEET_REDIS_URL")
        self.env.pop("FLEET_DATABASE_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._store: Any = None
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.state_dir / "server.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "control_plane.main:create_app", "--factory", "--host",
                 "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        proc = self.proc
        if wait_healthy(f"{self.url}/healthz", timeout_s, alive=lambda: proc.poll() is None):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"control plane exited: {(self.state_dir / 'server.log').read_text()[-2000:]}")
        raise RuntimeError("control plane did not become healthy")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.http.close()
        if self._store is not None:
            self._store.close()

    # ----- operator and worker side -----

    @property
    def store(self) -> Any:
        if self._store is None:
            from control_plane.services.store import FleetStore
            from control_plane.settings import Settings

            self._store = FleetStore(Settings(state_dir=self.state_dir))
        return self._store

    def new_device(self, name: str, labels: dict[str, str] | None = None) -> tuple[str, str]:
        r = self.http.post("/api/v1/devices", json={"name": name, "labels": labels or {},
                                                     "base_model": BASE_MODEL})
        r.raise_for_status()
        return r.json()["device_id"], r.json()["enrollment_token"]

    def publish(self, manifest: Manifest, artifact: bytes) -> str:
        """Store the artifact and register the manifest (re-signed by the server's key)."""
        self.store.put_artifact(artifact)
        v = self.store.register_model_version(replace(manifest, key_id="", signature=""), status="approved")
        return v.id

    def assign(self, device_id: str, version_id: str | None) -> None:
        self.store.set_desired_version(device_id, version_id, reason="test")

    def detail(self, device_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/devices/{device_id}")
        r.raise_for_status()
        return r.json()

    def events(self, device_id: str, version_id: str | None = None) -> list[dict[str, Any]]:
        evs = self.detail(device_id)["events"][::-1]  # newest first on the wire
        return [e for e in evs if version_id is None or e["version_id"] == version_id]

    def telemetry(self, device_id: str) -> list[Any]:
        return self.store.recent_telemetry(device_id, limit=10_000)
