"""Signals between processes: assignment changes (long-poll wake-ups), job wake-ups for the
dispatcher, and per-device rate limits. Through Redis when `FLEET_REDIS_URL` is set, otherwise
in-process only (other processes then find changes by polling). Redis failures never fail a
request: signals degrade to polling and rate limits to per-process counting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from control_plane import constants as C
from control_plane.errors import RateLimitedError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger(__name__)
Note = tuple[str, object]
RATE_SYNC_S = 1.0  # how often a process shares its rate-limit counts through Redis


class LocalRateLimiter:
    """Fixed one-minute windows per device, in this process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = -1
        self._counts: dict[str, int] = defaultdict(int)

    def hit(self, device_id: str, now: float) -> None:
        window = int(now // 60)
        if window != self._window:
            self._window, self._counts = window, defaultdict(int)
        self._counts[device_id] += 1
        if self._counts[device_id] > self.per_minute:
            raise RateLimitedError(
                f"device {device_id} sent more than {self.per_minute} requests this minute; "
                "slow down and retry after the Retry-After seconds", retry_after=60 - int(now % 60))


class AsyncBus:
    """The API process's side."""

    def __init__(self, redis_url: str | None, prefix: str, rate_limit_per_minute: int) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.rate_limit_per_minute = rate_limit_per_minute
        self.redis: aioredis.Redis | None = None
        self._closing = False  # set by close(): the background loops stop
        self._local_limiter = LocalRateLimiter(rate_limit_per_minute)
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._subscriber: asyncio.Task[None] | None = None
        self._rate_sync: asyncio.Task[None] | None = None
        self._rate_sync_failed = False
        self._rl_window = -1
        self._rl_pending: dict[str, int] = defaultdict(int)  # this process's counts not yet in Redis
        self._rl_known: dict[str, int] = {}  # fleet-wide counts as of the last sync
        self._rl_inflight: dict[str, int] = {}  # counts being added to Redis right now
        self._last_warning = 0.0

    async def start(self) -> None:
        if self.redis_url:
            import redis.asyncio as aioredis

            self.redis = client = aioredis.Redis.from_url(self.redis_url, socket_timeout=5,
                                                          socket_connect_timeout=2, health_check_interval=30)
            self._subscriber = asyncio.create_task(self._subscribe(client), name="assignment-subscriber")
            if self.rate_limit_per_minute > 0:
                self._rate_sync = asyncio.create_task(self._sync_rate_limits(client), name="rate-limit-sync")

    async def close(self) -> None:
        self._closing = True
        for task in (self._subscriber, self._rate_sync):
            if task:
                # redis-py's get_message(timeout=...) can swallow a cancellation that lands as its own
                # timeout fires, and the loop goes on: a shutdown then waited forever. Cancel again
                # until the task is done (the subscriber also stops at `_closing`).
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=2.0)
                while not done:
                    task.cancel()
                    done, _ = await asyncio.wait({task}, timeout=2.0)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        if self.redis is not None:
            await self.redis.aclose()

    def _warn(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            logger.warning("redis unavailable (%s): %s; falling back to polling", what, exc)

    async def ping(self) -> None:
        if self.redis is not None:
            await self.redis.ping()

    # --- assignment notifications -------------------------------------------------------
    def _wake_local(self, device_id: str) -> None:
        for ev in self._waiters.get(device_id, ()):
            ev.set()

    async def publish(self, notes: Iterable[Note]) -> None:
        devices = [str(v) for kind, v in notes if kind == C.NOTE_ASSIGNMENT]
        jobs = [v for kind, v in notes if kind == C.NOTE_JOB]
        for d in devices:
            self._wake_local(d)
        if self.redis is None or not (devices or jobs):
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for d in devices:
                    pipe.publish(C.key(self.prefix, C.ASSIGNMENT_CHANNEL), d)
                if jobs:
                    wake = C.key(self.prefix, C.JOBS_WAKE_LIST)
                    pipe.lpush(wake, *[str(j) for j in jobs])
                    pipe.ltrim(wake, 0, C.JOBS_WAKE_MAX - 1)
                await pipe.execute()
        except Exception as exc:  # a lost signal only delays a poller
            self._warn("publish", exc)

    async def wait_assignment(self, device_id: str, timeout: float) -> bool:
        """Wait until this device's assignment may have changed; False on timeout."""
        ev = asyncio.Event()
        self._waiters[device_id].add(ev)
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters[device_id].discard(ev)
            if not self._waiters[device_id]:
                del self._waiters[device_id]

    @property
    def notifies_across_processes(self) -> bool:
        return self.redis is not None and self._subscriber is not None and not self._subscriber.done()

    async def _subscribe(self, client: aioredis.Redis) -> None:
        channel = C.key(self.prefix, C.ASSIGNMENT_CHANNEL)
        backoff = 0.5
        while not self._closing:
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
                backoff = 0.5
                try:
                    while not self._closing:
                        msg = await pubsub.get_message(timeout=1.0)
                        if msg and msg.get("type") == "message":
                            data = msg["data"]
                            self._wake_local(data.decode() if isinstance(data, bytes) else str(data))
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect with backoff
                self._warn("subscribe", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    # --- rate limits -------------------------------------------------------------------
    async def hit_rate_limit(self, device_id: str) -> None:
        """Count one request of `device_id`; raise RateLimitedError over the per-minute limit.

        With Redis the count is fleet-wide but shared in the background: each process counts
        locally and, every RATE_SYNC_S, adds its counts to the Redis counters (INCRBY, one pipeline
        for all devices) and reads back the totals. A request costs no round trip; the limit is
        exact per process and fleet-wide to within one sync interval of traffic."""
        if self.rate_limit_per_minute <= 0:
            return
        now = time.time()
        if self.redis is None or self._rate_sync_failed:
            self._local_limiter.hit(device_id, now)
            return
        window = int(now // 60)
        if window != self._rl_window:
            self._rl_window, self._rl_pending, self._rl_known, self._rl_inflight = window, defaultdict(int), {}, {}
        count = (self._rl_known.get(device_id, 0) + self._rl_inflight.get(device_id, 0)
                 + self._rl_pending[device_id] + 1)
        if count > self.rate_limit_per_minute:
            raise RateLimitedError(
                f"device {device_id} sent more than {self.rate_limit_per_minute} requests this minute; "
                "slow down and retry after the Retry-After seconds", retry_after=60 - int(now % 60))
        self._rl_pending[device_id] += 1

    async def _sync_rate_limits(self, client: aioredis.Redis) -> None:
        while True:
            await asyncio.sleep(RATE_SYNC_S)
            if not self._rl_pending:
                continue
            window, pending = self._rl_window, self._rl_pending
            self._rl_pending, self._rl_inflight = defaultdict(int), pending
            items = list(pending.items())
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for device_id, n in items:
                        k = C.key(self.prefix, C.RATE_LIMIT, device_id=device_id, window=window)
                        pipe.incrby(k, n)
                        pipe.expire(k, 120)
                    results = await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # count locally until Redis answers again
                self._warn("rate limit", exc)
                self._rate_sync_failed = True
                self._rl_inflight = {}
                continue
            self._rate_sync_failed = False
            if window == self._rl_window:
                for (device_id, _), total in zip(items, results[::2], strict=True):
                    self._rl_known[device_id] = int(total)  # includes what this sync added
                self._rl_inflight = {}


class SyncBus:
    """The dispatcher's / controller's side (sync code)."""

    def __init__(self, redis_url: str | None, prefix: str) -> None:
        self.prefix = prefix
        self.redis = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_timeout=35, socket_connect_timeout=2)

    def publish(self, notes: Iterable[Note]) -> None:
        notes = list(notes)
        if self.redis is None or not notes:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for kind, v in notes:
                if kind == C.NOTE_ASSIGNMENT:
                    pipe.publish(C.key(self.prefix, C.ASSIGNMENT_CHANNEL), str(v))
                elif kind == C.NOTE_JOB:
                    pipe.lpush(C.key(self.prefix, C.JOBS_WAKE_LIST), str(v))
                    pipe.ltrim(C.key(self.prefix, C.JOBS_WAKE_LIST), 0, C.JOBS_WAKE_MAX - 1)
            pipe.execute()
        except Exception as exc:  # a lost signal only delays a poller
            logger.warning("redis publish failed (%s); pollers will catch up", exc)

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until a job wake-up arrives (True) or `timeout_s` passes (False). Without Redis
        it just sleeps: callers poll the jobs table after it returns either way."""
        if self.redis is None:
            time.sleep(timeout_s)
            return False
        try:
            got = self.redis.blpop([C.key(self.prefix, C.JOBS_WAKE_LIST)], timeout=max(timeout_s, 0.01))
            return got is not None
        except Exception as exc:
            logger.warning("redis wait failed (%s); polling instead", exc)
            time.sleep(timeout_s)
            return False

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
