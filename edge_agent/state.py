"""What the agent keeps on disk besides the outbox and the models: credentials and counters.

Layout of the state folder:
    credentials.json   device id, token, server URL, pinned signing keys (mode 0600)
    counters.json      next telemetry / sketch sequence numbers
    assignment.json    the last desired state the server sent (for `status`)
    rejections.json    records the server refused for good, with the reason (last 50)
    outbox/            see outbox.py
    models/, pointer.json, blocked.json   see store.py
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import NotEnrolledError
from edge_agent.fsutil import atomic_write_json, read_json

CREDENTIALS = "credentials.json"
COUNTERS = "counters.json"
ASSIGNMENT = "assignment.json"
REJECTIONS = "rejections.json"
MAX_REJECTIONS_KEPT = 50


@dataclass(frozen=True)
class Credentials:
    device_id: str
    device_token: str
    server_url: str
    signing_keys: dict[str, str]  # key id -> base64 public key, pinned at enrollment
    base_model: str
    poll_interval_s: float
    enrolled_at: float


def save_credentials(state_dir: Path, creds: Credentials) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / CREDENTIALS
    atomic_write_json(path, asdict(creds))
    os.chmod(path, 0o600)


def load_credentials(state_dir: Path) -> Credentials:
    doc = read_json(state_dir / CREDENTIALS)
    if doc is None:
        raise NotEnrolledError(f"no credentials in {state_dir}: run `qsae-agent enroll --token TOKEN` first")
    return Credentials(**doc)


class Counters:
    """Sequence numbers that must never repeat for a device (the server acks a repeated seq without
    storing it). A number is reserved on disk before the record that carries it is written, so a
    crash can skip a number but never reuse one."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / COUNTERS
        self._lock = threading.Lock()
        self._values: dict[str, int] = {k: int(v) for k, v in (read_json(self.path, {}) or {}).items()}

    def reserve(self, name: str) -> int:
        with self._lock:
            n = self._values.get(name, 0)
            self._values[name] = n + 1
            atomic_write_json(self.path, self._values)
            return n

    def peek(self, name: str) -> int:
        return self._values.get(name, 0)


class RejectionLog:
    """Records the server refused with a 4xx that retrying cannot fix, kept for `status`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / REJECTIONS
        doc = read_json(self.path, {}) or {}
        self.total = int(doc.get("total", 0))
        self.recent: list[dict[str, Any]] = list(doc.get("recent", []))

    def add(self, kind: str, status_code: int, reason: str, ident: str) -> None:
        self.total += 1
        self.recent = [*self.recent, {"kind": kind, "status": status_code, "reason": reason, "id": ident,
                                      "at": time.time()}][-MAX_REJECTIONS_KEPT:]
        atomic_write_json(self.path, {"total": self.total, "recent": self.recent})
