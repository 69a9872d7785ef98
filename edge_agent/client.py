"""HTTP client of the device API (docs/api-contract.md), over httpx.

Every call either returns the decoded answer or raises:
- `RetryableError` for transport errors, 5xx and 429 (with the server's `Retry-After`);
- `RejectedError` for any other 4xx, with the server's `detail` as the reason.
The client does not retry by itself: the daemon owns the backoff, so one slow server never blocks
inference or shutdown.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edge_agent.backoff import parse_retry_after
from edge_agent.errors import RejectedError, RetryableError

logger = logging.getLogger(__name__)

API = "/api/v1"


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    device_token: str
    signing_keys: dict[str, str]  # key id -> base64 Ed25519 public key, pinned on the device
    base_model: str
    poll_interval_s: float


@dataclass(frozen=True)
class Assignment:
    desired_version: str | None
    manifest: dict[str, Any] | None  # Manifest JSON, parsed and verified by the updater
    reason: str
    etag: str | None


def _detail(response: httpx.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(doc, dict) and "detail" in doc:
        detail = doc["detail"]
        return detail if isinstance(detail, str) else str(detail)[:300]
    return str(doc)[:300]


def raise_for_status(response: httpx.Response, what: str) -> None:
    code = response.status_code
    if code < 400:
        return
    reason = _detail(response)
    if code == 429 or code >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableError(f"{what}: HTTP {code}: {reason}", retry_after)
    raise RejectedError(f"{what}: HTTP {code}: {reason}", code, reason)


class FleetClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=httpx.Timeout(timeout_s), transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, what: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise_for_status(response, what)
        return response

    def enroll(self, enrollment_token: str, agent_version: str) -> Enrollment:
        r = self._send("enroll", "POST", f"{API}/enroll",
                       json={"enrollment_token": enrollment_token, "agent_version": agent_version})
        doc = r.json()
        return Enrollment(device_id=doc["device_id"], device_token=doc["device_token"],
                          signing_keys=dict(doc["signing_keys"]), base_model=doc["base_model"],
                          poll_interval_s=float(doc.get("poll_interval_s") or 60.0))

    def post_telemetry(self, device_id: str, records: list[dict[str, Any]]) -> set[int]:
        """Returns the acknowledged sequence numbers."""
        r = self._send("telemetry", "POST", f"{API}/devices/{device_id}/telemetry", json={"records": records})
        return {int(s) for s in r.json()["acked"]}

    def post_sketch(self, device_id: str, data: bytes) -> dict[str, Any]:
        r = self._send("sketch", "POST", f"{API}/devices/{device_id}/sketches", content=data,
                       headers={"Content-Type": "application/octet-stream"})
        return r.json()

    def post_events(self, device_id: str, events: list[dict[str, Any]]) -> set[str]:
        """Returns the acknowledged event UUIDs."""
        r = self._send("events", "POST", f"{API}/devices/{device_id}/events", json={"events": events})
        return {str(u) for u in r.json()["acked"]}

    def get_assignment(self, device_id: str, etag: str | None = None, wait_s: float = 0.0) -> Assignment | None:
        """The desired state, or None when it has not changed since `etag` (304)."""
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": f"{wait_s:g}"} if wait_s > 0 else {}
        r = self._send("assignment", "GET", f"{API}/devices/{device_id}/assignment", headers=headers,
                       params=params, timeout=self.timeout_s + wait_s)
        if r.status_code == 304:
            return None
        doc = r.json()
        return Assignment(desired_version=doc.get("desired_version"), manifest=doc.get("manifest"),
                          reason=str(doc.get("reason", "")), etag=r.headers.get("ETag"))

    def download(self, sha256: str, dest: Path, max_bytes: int) -> str:
        """Stream /artifacts/{sha256} into `dest`, reading at most `max_bytes` (what the manifest
        announced); returns the sha256 of what was received, for the caller to compare."""
        digest = hashlib.sha256()
        what = f"artifact {sha256[:12]}"
        try:
            with self._http.stream("GET", f"{API}/artifacts/{sha256}") as r:
                if r.status_code >= 400:
                    r.read()
                raise_for_status(r, what)
                total = 0
                with open(dest, "wb") as fh:
                    for chunk in r.iter_bytes(1 << 16):
                        total += len(chunk)
                        if total > max_bytes:
                            break
                        digest.update(chunk)
                        fh.write(chunk)
        except httpx.TransportError as exc:
            raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from exc
        return digest.hexdigest()
