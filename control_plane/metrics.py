"""Prometheus metrics of one app instance (own registry, so several apps can live in one process).
Counters are per process; the fleet gauges are computed from the database at scrape time, so every
replica reports the same values."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qsae_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram("qsae_http_request_duration_seconds", "HTTP request latency", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 35),
                                 registry=r)
        self.ingested = Counter("qsae_ingest_records", "records accepted from devices", ["kind"], registry=r)
        self.ingest_bytes = Counter("qsae_ingest_bytes", "bytes accepted from devices", ["kind"], registry=r)
        self.ingested_telemetry = self.ingested.labels("telemetry")  # bound once: the hot path
        self.rejected = Counter("qsae_ingest_rejected", "device uploads rejected", ["kind", "reason"], registry=r)
        self.queue_depth = Gauge("qsae_job_queue_depth", "jobs waiting to run", registry=r)
        self.jobs = Gauge("qsae_jobs", "jobs by status", ["status"], registry=r)
        self.devices = Gauge("qsae_devices", "devices by state", ["state"], registry=r)
        self.sketches = Gauge("qsae_sketches_stored", "sketch uploads stored", registry=r)
        self.token_cache = Gauge("qsae_token_cache_entries", "cached bearer tokens", registry=r)
        self.telemetry_batches = Gauge("qsae_telemetry_commits", "telemetry group commits by this process",
                                       registry=r)
        self.telemetry_queue = Gauge("qsae_telemetry_writer_queue", "telemetry requests waiting to commit",
                                     registry=r)

    def set_gauges(self, g: dict[str, Any], token_entries: int, writer_queue: int, writer_batches: int) -> None:
        self.telemetry_batches.set(writer_batches)
        for status, n in g["jobs_by_status"].items():
            self.jobs.labels(status).set(n)
        self.queue_depth.set(g["jobs_by_status"].get("queued", 0))
        for state, n in g["devices_by_state"].items():
            self.devices.labels(state).set(n)
        self.sketches.set(g["sketches_total"])
        self.token_cache.set(token_entries)
        self.telemetry_queue.set(writer_queue)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests by route template and status, and their latency (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # labels() is not free

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            key = (scope["method"], path, status)
            children = self._children.get(key)
            if children is None:
                children = (self.metrics.requests.labels(scope["method"], path, str(status)),
                            self.metrics.latency.labels(path))
                if len(self._children) < 10_000:
                    self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """413 for bodies over the cap, before they are read: by Content-Length, and by counting when
    the body is chunked. Sketch uploads have their own (smaller) cap. 408 when a body stalls: no
    piece of it for `body_timeout_s` (a slow client cannot hold a request open for ever)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_sketch_bytes: int, body_timeout_s: float = 10.0) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_sketch = max_sketch_bytes
        self.body_timeout_s = body_timeout_s

    def _timed(self, receive: Receive) -> Receive:
        """`receive`, with a deadline on each piece of the body until its last one arrived."""
        done = False

        async def timed_receive() -> Message:
            nonlocal done
            if done:
                return await receive()  # e.g. waiting for a disconnect while a response streams
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"the request body stalled: nothing arrived for {self.body_timeout_s:g} s; "
                                         "send the whole body promptly") from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return timed_receive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        receive = self._timed(receive)
        cap = self.max_sketch if scope["path"].endswith("/sketches") else self.max_body
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > cap or declared < 0:
                    await _too_large(send, cap, declared)
                    return
                # The HTTP server delivers exactly Content-Length bytes: nothing left to count.
                await self.app(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    # An HTTPException passes FastAPI's body parsing unchanged -> one 413 handler.
                    raise HTTPException(413, _too_large_detail(cap, seen))
            return message

        await self.app(scope, counting_receive, send)


def _too_large_detail(cap: int, size: int) -> str:
    what = "a malformed Content-Length" if size < 0 else f"{size} bytes"
    return f"request body has {what}, over the cap of {cap} bytes; send less per request"


async def _too_large(send: Send, cap: int, size: int) -> None:
    body = json.dumps({"detail": _too_large_detail(cap, size)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
