"""Group-committed telemetry ingest: requests hand their records to a writer task and wait; the
writer inserts everything that queued up meanwhile in one transaction (ON CONFLICT DO NOTHING on
(device, seq), so a re-sent record is acked again, never stored twice), commits at the database's
normal durability, and only then answers every waiting request. Nothing is acked before its
commit; a failed batch is retried request by request, so one bad request fails alone.

On PostgreSQL the writer owns one asyncpg connection and sends a batch as a single
`INSERT ... SELECT FROM unnest(arrays)`; elsewhere (SQLite) it uses SQLAlchemy Core. The devices'
`last_seen_at` / `deployed_version` are derived state: they are collected in memory and written by
a background task every `touch_interval_s` in their own transaction (rows in id order), never in
the way of an ack; a device written less than TOUCH_MIN_AGE_S ago with an unchanged version is
skipped. With `touch_interval_s=0` they are written before the acks (tests, demos). A touch does
not overwrite the version an `applied` event recorded after the touch's telemetry was received: the
agent sends in order, so that telemetry came from the version before (it would set it back)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, case, func, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.models import Base, Device, Telemetry, utcnow
from control_plane.errors import UnavailableError
from control_plane.schemas import TelemetryRecord

logger = logging.getLogger(__name__)
TOUCH_MIN_AGE_S = 15.0  # last_seen_at is refreshed at most this often per device (offline is minutes)
_TELEMETRY = Base.metadata.tables[Telemetry.__tablename__]
_DEVICES = Base.metadata.tables[Device.__tablename__]

_PG_INSERT = """
INSERT INTO telemetry (device_id, seq, uuid, received_at, window_start, window_end, inference_count,
                       labelled_count, labelled_correct, estimated_accuracy, mean_confidence,
                       latency_p50_ms, latency_p95_ms, deployed_version, outbox_dropped)
SELECT t.device_id, t.seq, t.uuid, $1, t.ws, t.we, t.n, t.lc, t.lk, t.ea, t.mc, t.p50, t.p95, t.ver, t.dropped
FROM unnest($2::varchar[], $3::bigint[], $4::varchar[], $5::float8[], $6::float8[], $7::bigint[],
            $8::bigint[], $9::bigint[], $10::float8[], $11::float8[], $12::float8[], $13::float8[],
            $14::varchar[], $15::bigint[])
     AS t(device_id, seq, uuid, ws, we, n, lc, lk, ea, mc, p50, p95, ver, dropped)
ON CONFLICT (device_id, seq) DO NOTHING
"""
# Touches on PostgreSQL: rows locked in id order (no deadlock between replicas), then one update.
_PG_TOUCH_LOCK = text("SELECT id FROM devices WHERE id = ANY(CAST(:ids AS varchar[])) ORDER BY id "
                      "FOR NO KEY UPDATE")  # not FOR UPDATE: that would block inserts' FK checks
_PG_TOUCH = text("""
UPDATE devices AS d SET last_seen_at = GREATEST(d.last_seen_at, t.seen),
       deployed_version = CASE WHEN d.last_event_kind = 'applied' AND d.last_event_at > t.seen
                               THEN d.deployed_version ELSE COALESCE(t.ver, d.deployed_version) END
FROM unnest(CAST(:ids AS varchar[]), CAST(:seen AS timestamptz[]), CAST(:vers AS varchar[])) AS t(id, seen, ver)
WHERE d.id = t.id
""")


@dataclass
class _Pending:
    device_id: str
    records: Sequence[TelemetryRecord]
    future: asyncio.Future[list[int]] = field(repr=False)


class TelemetryWriter:
    """One per API process: one writer task drains the queue, so the batch grows while a commit is
    in flight (a group commit)."""

    def __init__(self, engine: AsyncEngine, *, max_batch_rows: int = 5000, touch_interval_s: float = 2.0,
                 linger_s: float = 0.0, linger_below: int = 16) -> None:
        self.engine = engine
        self.linger_s = linger_s  # wait this long for company when fewer than linger_below requests queue
        self.linger_below = linger_below
        self.max_batch_rows = max_batch_rows
        self.touch_interval_s = touch_interval_s
        self.postgres = engine.dialect.name == "postgresql"
        self._pg: Any = None  # the writer's own asyncpg connection
        self._insert = sqlite_insert(_TELEMETRY).on_conflict_do_nothing(index_elements=["device_id", "seq"])
        applied_since = and_(_DEVICES.c.last_event_kind == "applied", _DEVICES.c.last_event_at > bindparam("b_seen"))
        self._touch = (update(_DEVICES).where(_DEVICES.c.id == bindparam("b_id"))
                       .values(last_seen_at=bindparam("b_seen"),
                               deployed_version=case((applied_since, _DEVICES.c.deployed_version),
                                                     else_=func.coalesce(bindparam("b_version"),
                                                                         _DEVICES.c.deployed_version))))
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._touches: dict[str, tuple[dt.datetime, str | None]] = {}  # device -> (seen, version)
        self._written: dict[str, tuple[float, str | None]] = {}  # device -> (monotonic, version) last written
        self._toucher: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed
        self.records_acked = 0  # records acknowledged (new or already stored)

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="telemetry-writer")
        if self.touch_interval_s > 0:
            self._toucher = asyncio.create_task(self._touch_loop(), name="device-touches")

    async def stop(self) -> None:
        """Write what is queued and the pending device touches, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._toucher is not None:
            self._toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._toucher
            self._toucher = None
        with contextlib.suppress(Exception):
            await self._flush_touches()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()
            self._pg = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, device_id: str, records: Sequence[TelemetryRecord]) -> list[int]:
        """Store `records` of `device_id`; returns their seqs once they are committed."""
        if not self.running:
            raise UnavailableError("telemetry ingest is not running (the server is starting or stopping); "
                                   "retry shortly")
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
            # Let requests already received join this batch; under load linger a little longer
            # (fewer, larger commits cost the database far less per record).
            await asyncio.sleep(0)
            if self.linger_s > 0 and len(self._queue) < self.linger_below:
                await asyncio.sleep(self.linger_s)
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
                else:
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
        records = [(p.device_id, r) for p in batch for r in p.records]
        records.sort(key=lambda x: (x[0], x[1].seq))  # one lock order for every transaction
        if self.postgres:
            await self._write_pg(now, records)
        else:
            await self._write_sqlalchemy(now, records)
        self.batches += 1
        self.records_acked += len(records)
        self._collect_touches(now, records)
        if self.touch_interval_s <= 0:
            await self._flush_touches_logged()  # before the acks: a client then sees its last_seen
        for p in batch:
            if not p.future.done():
                p.future.set_result([r.seq for r in p.records])

    async def _connection(self) -> Any:
        if self._pg is None or self._pg.is_closed():
            import asyncpg

            dsn = make_url(self.engine.url).set(drivername="postgresql").render_as_string(hide_password=False)
            self._pg = await asyncpg.connect(dsn)
        return self._pg

    async def _write_pg(self, now: dt.datetime, records: list[tuple[str, TelemetryRecord]]) -> None:
        cols: list[list[Any]] = [[] for _ in range(14)]
        for device_id, r in records:
            for col, v in zip(cols, (device_id, r.seq, r.uuid, r.window_start, r.window_end, r.inference_count,
                                     r.labelled_count, r.labelled_correct, r.estimated_accuracy, r.mean_confidence,
                                     r.latency_p50_ms, r.latency_p95_ms, r.deployed_version, r.outbox_dropped),
                              strict=True):
                col.append(v)
        import asyncpg

        try:  # one statement = one implicit transaction, committed at default durability
            conn = await self._connection()
            await conn.execute(_PG_INSERT, now, *cols)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            if self._pg is not None and self._pg.is_closed():
                self._pg = None
            raise UnavailableError(f"the database is unavailable ({type(exc).__name__}); retry shortly") from exc

    async def _write_sqlalchemy(self, now: dt.datetime, records: list[tuple[str, TelemetryRecord]]) -> None:
        rows = [{"device_id": d, "seq": r.seq, "uuid": r.uuid, "received_at": now, "window_start": r.window_start,
                 "window_end": r.window_end, "inference_count": r.inference_count,
                 "labelled_count": r.labelled_count, "labelled_correct": r.labelled_correct,
                 "estimated_accuracy": r.estimated_accuracy, "mean_confidence": r.mean_confidence,
                 "latency_p50_ms": r.latency_p50_ms, "latency_p95_ms": r.latency_p95_ms,
                 "deployed_version": r.deployed_version, "outbox_dropped": r.outbox_dropped}
                for d, r in records]
        async with self.engine.begin() as conn:
            await conn.execute(self._insert, rows)

    def _collect_touches(self, now: dt.datetime, records: list[tuple[str, TelemetryRecord]]) -> None:
        mono = time.monotonic()
        for device_id, r in records:  # sorted by seq: the newest record's version wins
            prev = self._touches.get(device_id)
            version = r.deployed_version if r.deployed_version is not None else (prev[1] if prev else None)
            written = self._written.get(device_id)
            if (prev is None and written is not None and mono - written[0] < TOUCH_MIN_AGE_S
                    and version in (None, written[1])):
                continue
            self._touches[device_id] = (now, version)

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.touch_interval_s)
            await self._flush_touches_logged()

    async def _flush_touches_logged(self) -> None:
        try:
            await self._flush_touches()
        except Exception as exc:  # derived state: keep the touches and try again later
            logger.warning("could not update devices' last_seen_at (%s); will retry", exc)

    async def _flush_touches(self) -> None:
        if not self._touches:
            return
        touches, self._touches = self._touches, {}
        items = sorted(touches.items())
        try:
            async with self.engine.begin() as conn:
                if self.postgres:
                    ids = [d for d, _ in items]
                    await conn.execute(_PG_TOUCH_LOCK, {"ids": ids})
                    await conn.execute(_PG_TOUCH, {"ids": ids, "seen": [t[0] for _, t in items],
                                                   "vers": [t[1] for _, t in items]})
                else:
                    await conn.execute(self._touch, [{"b_id": d, "b_seen": seen, "b_version": v}
                                                     for d, (seen, v) in items])
        except Exception:
            for d, t in touches.items():  # keep newer touches that arrived meanwhile
                self._touches.setdefault(d, t)
            raise
        mono = time.monotonic()
        for d, (_, v) in touches.items():
            self._written[d] = (mono, v)
        if len(self._written) > 500_000:
            self._written.clear()
