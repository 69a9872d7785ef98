"""Group-committed telemetry ingest: requests hand their records to a writer task and wait; the
writer inserts everything that queued up meanwhile in one transaction (ON CONFLICT DO NOTHING on
(device, seq), so a re-sent record is acked again, never stored twice), commits at the database's
normal durability, and only then answers every waiting request. Nothing is acked before its
commit; a failed batch is retried request by request, so one bad request fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.models import Device, Telemetry, utcnow
from control_plane.errors import UnavailableError
from control_plane.schemas import TelemetryRecord

logger = logging.getLogger(__name__)
_TELEMETRY = Telemetry.__table__
_DEVICES = Device.__table__


@dataclass
class _Pending:
    device_id: str
    records: Sequence[TelemetryRecord]
    future: asyncio.Future[list[int]] = field(repr=False)


class TelemetryWriter:
    """One per API process. `concurrency` writer tasks drain one queue (1 for SQLite, which has a
    single writer anyway)."""

    def __init__(self, engine: AsyncEngine, *, max_batch_rows: int = 5000, concurrency: int = 2) -> None:
        self.engine = engine
        self.max_batch_rows = max_batch_rows
        self.concurrency = 1 if engine.dialect.name == "sqlite" else max(1, concurrency)
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._insert = insert(_TELEMETRY).on_conflict_do_nothing(index_elements=["device_id", "seq"])
        self._touch = (update(_DEVICES).where(_DEVICES.c.id == bindparam("b_id"))
                       .values(last_seen_at=bindparam("b_seen"),
                               deployed_version=func.coalesce(bindparam("b_version"), _DEVICES.c.deployed_version)))
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.batches = 0  # transactions committed
        self.records_acked = 0  # records acknowledged (new or already stored)

    async def start(self) -> None:
        self._closing = False
        self._tasks = [asyncio.create_task(self._run(), name=f"telemetry-writer-{i}")
                       for i in range(self.concurrency)]

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, device_id: str, records: Sequence[TelemetryRecord]) -> list[int]:
        """Store `records` of `device_id`; returns their seqs once they are committed."""
        if self._closing or not self._tasks:
            raise UnavailableError("the server is shutting down; retry shortly")
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(device_id, records, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[_Pending] = []
            rows = 0
            while self._queue and (not batch or rows + len(self._queue[0].records) <= self.max_batch_rows):
                p = self._queue.popleft()
                batch.append(p)
                rows += len(p.records)
            try:
                await self._write(batch)
            except Exception as exc:
                if len(batch) == 1:
                    self._fail(batch[0], exc)
                    continue
                logger.warning("telemetry batch of %d requests failed (%s); retrying them one by one",
                               len(batch), exc)
                for p in batch:
                    try:
                        await self._write([p])
                    except Exception as one_exc:
                        self._fail(p, one_exc)

    def _fail(self, p: _Pending, exc: Exception) -> None:
        logger.error("telemetry write for device %s failed: %s", p.device_id, exc,
                     extra={"device_id": p.device_id})
        if not p.future.done():
            p.future.set_exception(exc)

    async def _write(self, batch: list[_Pending]) -> None:
        now = utcnow()
        rows = []
        latest: dict[str, tuple[int, str | None]] = {}
        for p in batch:
            for r in p.records:
                rows.append({
                    "device_id": p.device_id, "seq": r.seq, "uuid": r.uuid, "received_at": now,
                    "window_start": r.window_start, "window_end": r.window_end,
                    "inference_count": r.inference_count, "labelled_count": r.labelled_count,
                    "labelled_correct": r.labelled_correct, "estimated_accuracy": r.estimated_accuracy,
                    "mean_confidence": r.mean_confidence, "latency_p50_ms": r.latency_p50_ms,
                    "latency_p95_ms": r.latency_p95_ms, "deployed_version": r.deployed_version,
                    "outbox_dropped": r.outbox_dropped})
                prev = latest.get(p.device_id)
                if prev is None or r.seq >= prev[0]:
                    latest[p.device_id] = (r.seq, r.deployed_version)
        # Same lock order in every transaction (sorted keys), so concurrent writers never deadlock.
        rows.sort(key=lambda row: (row["device_id"], row["seq"]))
        touches = [{"b_id": d, "b_seen": now, "b_version": v} for d, (_, v) in sorted(latest.items())]
        async with self.engine.begin() as conn:
            await conn.execute(self._insert, rows)
            await conn.execute(self._touch, touches)
        self.batches += 1
        self.records_acked += len(rows)
        for p in batch:
            if not p.future.done():
                p.future.set_result([r.seq for r in p.records])

