"""An in-process stand-in for the device API (docs/api-contract.md) on httpx.MockTransport, for
fast tests of retry and ordering logic. The contract tests run against the real control plane."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field

import httpx

from qsae_shared.manifest import Manifest
from qsae_shared.sketch import parse_sketch


@dataclass
class FakeServer:
    device_id: str = "dev-1"
    token: str = "tok"
    telemetry: dict[int, dict] = field(default_factory=dict)  # seq -> record
    telemetry_order: list[int] = field(default_factory=list)  # seqs in the order they arrived
    sketches: dict[int, bytes] = field(default_factory=dict)
    events: dict[str, dict] = field(default_factory=dict)
    event_order: list[str] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    manifest: dict | None = None
    down: bool = False  # every request fails to connect
    fail_with: list[tuple[int, dict]] = field(default_factory=list)  # (status, headers) for the next requests
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def assign(self, manifest: Manifest | dict | None) -> None:
        self.manifest = manifest.to_dict() if isinstance(manifest, Manifest) else manifest

    def serve(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        return sha

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _etag(self) -> str:
        return '"' + hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16] + '"'

    def handle(self, req: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(f"{req.method} {req.url.path}")
            if self.down:
                raise httpx.ConnectError("connection refused", request=req)
            if self.fail_with:
                status, headers = self.fail_with.pop(0)
                return httpx.Response(status, headers=headers, json={"detail": f"injected {status}"})
            if req.headers.get("Authorization") != f"Bearer {self.token}":
                return httpx.Response(401, json={"detail": "bad token"})
            path = req.url.path
            base = f"/api/v1/devices/{self.device_id}"
            if path == f"{base}/telemetry":
                acked = []
                for r in json.loads(req.content)["records"]:
                    if r["seq"] not in self.telemetry:
                        self.telemetry[r["seq"]] = r
                        self.telemetry_order.append(r["seq"])
                    acked.append(r["seq"])
                return httpx.Response(200, json={"acked": acked})
            if path == f"{base}/sketches":
                s = parse_sketch(req.content)
                stored = s.seq not in self.sketches
                self.sketches.setdefault(s.seq, req.content)
                return httpx.Response(200, json={"seq": s.seq, "stored": stored})
            if path == f"{base}/events":
                acked = []
                for e in json.loads(req.content)["events"]:
                    if e["uuid"] not in self.events:
                        self.events[e["uuid"]] = e
                        self.event_order.append(e["uuid"])
                    acked.append(e["uuid"])
                return httpx.Response(200, json={"acked": acked})
            if path == f"{base}/assignment":
                etag = self._etag()
                if req.headers.get("If-None-Match") == etag:
                    return httpx.Response(304, headers={"ETag": etag})
                m = self.manifest
                return httpx.Response(200, headers={"ETag": etag}, json={
                    "desired_version": m["version_id"] if m else None, "manifest": m, "reason": "test"})
            if path.startswith("/api/v1/artifacts/"):
                data = self.artifacts.get(path.rsplit("/", 1)[1])
                if data is None:
                    return httpx.Response(404, json={"detail": "no such artifact"})
                return httpx.Response(200, content=data)
            return httpx.Response(404, json={"detail": f"no route {path}"})

    def event_kinds(self, version_id: str | None = None) -> list[str]:
        return [self.events[u]["kind"] for u in self.event_order
                if version_id is None or self.events[u]["version_id"] == version_id]
