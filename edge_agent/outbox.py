"""The on-disk outbox: what the device still has to tell the server (telemetry, sketches, events).

One file per record, named `<order>.<kind>` with a zero-padded order number, written atomically
(temp file, fsync, `os.replace`, fsync of the folder), so a record is either fully there or not at
all after SIGKILL or power loss. Records are sent oldest first and deleted only after the server
acknowledged them. The outbox is bounded (records and bytes): appending past a bound drops the
oldest records, and the cumulative number dropped is persisted and reported in telemetry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import atomic_write, fsync_dir, read_json, remove_stale_temps

logger = logging.getLogger(__name__)

KINDS = ("telemetry", "sketch", "event")
_DROPPED_FILE = "dropped.json"


@dataclass(frozen=True)
class OutboxRecord:
    order: int  # position in the outbox, increasing in append order
    kind: str  # one of KINDS
    size: int  # bytes on disk
    path: Path

    def read(self) -> bytes:
        return self.path.read_bytes()


class Outbox:
    def __init__(self, root: Path, max_records: int = 10_000, max_bytes: int = 256 * 2**20,
                 readonly: bool = False) -> None:
        self.root = Path(root)
        self.max_records = max_records  # bound on the number of records held
        self.max_bytes = max_bytes  # bound on their total size
        self._lock = threading.Lock()
        if not readonly:  # a reader (`qsae-agent status`) must not race the daemon's writes
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.root)
        self._records: list[OutboxRecord] = []
        for p in self.root.iterdir() if self.root.is_dir() else ():
            order, _, kind = p.name.partition(".")
            if order.isdigit() and kind in KINDS:
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile (readonly use)
                    self._records.append(OutboxRecord(int(order), kind, p.stat().st_size, p))
        self._records.sort(key=lambda r: r.order)
        self._next = self._records[-1].order + 1 if self._records else 0
        self._dropped = int((read_json(self.root / _DROPPED_FILE, {}) or {}).get("dropped", 0))

    @property
    def dropped(self) -> int:
        """Records dropped to keep the outbox within its bounds, ever (survives restarts)."""
        return self._dropped

    def __len__(self) -> int:
        return len(self._records)

    @property
    def size_bytes(self) -> int:
        return sum(r.size for r in self._records)

    def append(self, kind: str, payload: bytes) -> OutboxRecord:
        """Store a record durably; drops the oldest records if the outbox is over a bound."""
        if kind not in KINDS:
            raise ValueError(f"unknown outbox record kind {kind!r}")
        with self._lock:
            record = OutboxRecord(self._next, kind, len(payload), self.root / f"{self._next:016d}.{kind}")
            atomic_write(record.path, payload)
            self._next += 1
            self._records.append(record)
            self._enforce_bounds()
            return record

    def _enforce_bounds(self) -> None:
        dropped = 0
        total = self.size_bytes
        while len(self._records) > 1 and (len(self._records) > self.max_records or total > self.max_bytes):
            oldest = self._records.pop(0)
            total -= oldest.size
            with contextlib.suppress(FileNotFoundError):
                oldest.path.unlink()
            dropped += 1
        if dropped:
            self._dropped += dropped
            atomic_write(self.root / _DROPPED_FILE, f'{{"dropped": {self._dropped}}}'.encode())
            logger.warning("outbox full: dropped %d oldest records (%d dropped in total)", dropped,
                           self._dropped)

    def pending(self, limit: int | None = None) -> list[OutboxRecord]:
        """Records still to send, oldest first."""
        with self._lock:
            return list(self._records[:limit])

    def delete(self, records: list[OutboxRecord]) -> None:
        """Forget records the server acknowledged (a record already dropped is ignored)."""
        if not records:
            return
        orders = {r.order for r in records}
        with self._lock:
            for r in records:
                with contextlib.suppress(FileNotFoundError):
                    r.path.unlink()
            self._records = [r for r in self._records if r.order not in orders]
            fsync_dir(self.root)
