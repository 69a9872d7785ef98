"""Telemetry ingest benchmark (target P5): can one node take a 100,000-device fleet reporting once a
minute (>= 1,700 requests/s, p99 <= 100 ms) without losing or duplicating a record?

    python -m benchmarks.ingest [--quick] --json PATH

It creates a scratch PostgreSQL database (default durability: synchronous_commit on), migrates it,
starts the control plane with uvicorn on 127.0.0.1, creates and enrolls N devices through the API
(each gets its own token), then drives telemetry posts (one record each, rotating over the devices'
tokens) from an async load generator on loopback with bounded concurrency for `duration` seconds,
and the same load against the app's no-op endpoint. Afterwards it compares the records the server
acknowledged with the rows in the database. The load generator runs on the same 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from workers.demo import free_port, wait_healthy

PG_ADMIN = os.environ.get("QSAE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
HOST = "127.0.0.1"


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: int = 0
    acked: int = 0
    elapsed: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {"requests": len(lat) + self.errors, "rps": round(len(lat) / self.elapsed, 1) if self.elapsed else 0.0,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": self.errors,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator must cost little CPU, since it
    shares the machine with the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        r, w = await asyncio.open_connection(HOST, port)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(r, w)

    async def request(self, method: str, path: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{headers}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _record(seq: int) -> dict[str, Any]:
    now = time.time()
    return {"uuid": str(uuid.uuid4()), "seq": seq, "window_start": now - 60.0, "window_end": now,
            "inference_count": 1200, "labelled_count": 40, "labelled_correct": 37, "estimated_accuracy": 0.91,
            "mean_confidence": 0.88, "latency_p50_ms": 0.21, "latency_p95_ms": 0.35,
            "deployed_version": "fmnist-cnn-v1", "outbox_dropped": 0}


async def drive(port: int, devices: list[tuple[str, str]], duration: float, concurrency: int, *,
                noop: bool, seq_start: dict[str, int]) -> Phase:
    """`concurrency` connections, each sending its next request as soon as the last is answered,
    rotating over the devices (and their tokens), for `duration` seconds."""
    phase = Phase()
    cursor = 0
    stop_at = time.perf_counter() + duration

    def next_request() -> tuple[str, str, bytes, int]:
        nonlocal cursor
        device_id, token = devices[cursor % len(devices)]
        cursor += 1
        seq = seq_start[device_id]
        seq_start[device_id] = seq + 1
        path = "/api/v1/_noop" if noop else f"/api/v1/devices/{device_id}/telemetry"
        body = json.dumps({"records": [_record(seq)]}).encode()
        return path, f"Authorization: Bearer {token}\r\n", body, seq

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            while time.perf_counter() < stop_at:
                path, hdr, body, _seq = next_request()
                t0 = time.perf_counter()
                try:
                    status, payload = await asyncio.wait_for(conn.request("POST", path, body, hdr), 30)
                except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
                    phase.errors += 1
                    conn.close()
                    conn = await Connection.open(port)
                    continue
                phase.statuses[status] = phase.statuses.get(status, 0) + 1
                if status != 200:
                    phase.errors += 1
                    continue
                phase.latencies.append(time.perf_counter() - t0)
                if not noop:
                    phase.acked += len(json.loads(payload)["acked"])
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    phase.elapsed = time.perf_counter() - t0
    return phase


async def enroll_devices(port: int, admin_key: str, n: int, concurrency: int = 64) -> list[tuple[str, str]]:
    """Create and enroll `n` devices through the operator and device APIs."""
    out: list[tuple[str, str]] = []
    names = iter(range(n))
    auth = f"Authorization: Bearer {admin_key}\r\n"

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            for i in names:
                body = json.dumps({"name": f"bench-{i:06d}", "labels": {"cohort": f"c{i % 10}"},
                                   "base_model": "fmnist-cnn"}).encode()
                status, payload = await conn.request("POST", "/api/v1/devices", body, auth)
                if status != 201:
                    raise RuntimeError(f"creating a device failed: HTTP {status} {payload[:200]!r}")
                token = json.loads(payload)["enrollment_token"]
                status, payload = await conn.request("POST", "/api/v1/enroll", json.dumps(
                    {"enrollment_token": token, "agent_version": "bench"}).encode())
                if status != 200:
                    raise RuntimeError(f"enrolling failed: HTTP {status} {payload[:200]!r}")
                doc = json.loads(payload)
                out.append((doc["device_id"], doc["device_token"]))
        finally:
            conn.close()

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return out


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if wait_healthy(f"http://{HOST}:{port}/readyz", timeout, step_s=0.3, alive=lambda: proc.poll() is None,
                    request_timeout_s=2):
        return
    if proc.poll() is not None:
        raise RuntimeError(f"the server exited with {proc.returncode}")
    raise RuntimeError("the server did not become ready")


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (and of their children), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields_[11]) + int(fields_[12])) / tick
    return total


def _process_tree(root: int) -> list[int]:
    out = [root]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == root:
                out.append(int(pid))
    return out


def _postgres_pids() -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(pid))
            except OSError:
                continue
    return pids


def measured(coro_factory: Any, server_pid: int) -> tuple[Phase, dict[str, float]]:
    """Run one load phase; also the CPU seconds the server and PostgreSQL spent per request."""
    server = _process_tree(server_pid)
    pg_before = {pid: _cpu_seconds([pid]) for pid in _postgres_pids()}
    s0, l0 = _cpu_seconds(server), time.process_time()
    phase = _run_loop(coro_factory())
    s1, l1 = _cpu_seconds(server), time.process_time()
    # Backends that exited meanwhile are lost either way; new ones count from zero.
    pg_after = {pid: _cpu_seconds([pid]) for pid in _postgres_pids()}
    p1 = sum(v - pg_before.get(pid, 0.0) for pid, v in pg_after.items())
    p0 = 0.0
    n = max(1, len(phase.latencies) + phase.errors)
    return phase, {"server_cpu_ms_per_request": round((s1 - s0) * 1000 / n, 3),
                   "postgres_cpu_ms_per_request": round((p1 - p0) * 1000 / n, 3),
                   "loadgen_cpu_ms_per_request": round((l1 - l0) * 1000 / n, 3)}


def _commits(port: int, workers: int) -> int | None:
    """Group commits so far, summed over the worker processes /metrics reached (each scrape lands
    on one worker; scrape until every distinct value was seen a few times)."""
    import re

    import httpx

    if workers != 1:
        return None  # per-process counters; with several workers the sum is not observable here
    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=30).text
    m = re.search(r"^qsae_telemetry_commits ([0-9.e+]+)$", text, re.M)
    return int(float(m.group(1))) if m else None


def count_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])  # type: ignore[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from control_plane.db.migrate import upgrade

    devices_n = args.devices or (2_000 if args.quick else 10_000)
    duration = args.duration or (15.0 if args.quick else 60.0)
    db = f"qsae_ingest_bench_{os.getpid()}"
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{db}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    port = free_port()
    admin_key = "qk_bench-" + uuid.uuid4().hex
    state = Path(tempfile.mkdtemp(prefix="qsae-ingest-"))
    env = {**os.environ, "FLEET_DATABASE_URL": url, "FLEET_STATE_DIR": str(state),
           "FLEET_BOOTSTRAP_ADMIN_KEY": admin_key, "FLEET_NOOP_ENDPOINT": "true", "FLEET_LOG_LEVEL": "WARNING",
           "FLEET_DB_POOL_SIZE": "8"}
    env.pop("FLEET_REDIS_URL", None)
    if args.redis:
        env["FLEET_REDIS_URL"] = args.redis
        env["FLEET_REDIS_PREFIX"] = f"qsae-bench-{uuid.uuid4().hex[:8]}:"
    proc = None
    try:
        upgrade(url)
        cmd = [sys.executable, "-m", "uvicorn", "control_plane.main:create_app", "--factory", "--host", HOST,
               "--port", str(port), "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]
        proc = subprocess.Popen(cmd, env=env)
        _wait_ready(port, proc)
        t0 = time.perf_counter()
        devices = asyncio.run(enroll_devices(port, admin_key, devices_n))
        enroll_s = time.perf_counter() - t0
        print(f"enrolled {len(devices)} devices in {enroll_s:.1f} s", flush=True)
        seqs = dict.fromkeys((d for d, _ in devices), 0)
        load_before = os.getloadavg()[0]
        tel, tel_cpu = measured(lambda: drive(port, devices, duration, args.concurrency, noop=False,
                                              seq_start=seqs), proc.pid)
        print(f"telemetry: {tel.summary()} {tel_cpu}", flush=True)
        commits = _commits(port, args.workers)
        nop, nop_cpu = measured(lambda: drive(port, devices, duration, args.concurrency, noop=True,
                                              seq_start=dict(seqs)), proc.pid)
        print(f"noop: {nop.summary()} {nop_cpu}", flush=True)
        stored = count_rows(url)
        return {"devices": len(devices), "duration_s": duration, "acked": tel.acked, "stored": stored,
                "telemetry": {**tel.summary(), **tel_cpu}, "noop": {**nop.summary(), **nop_cpu},
                "config": {"concurrency": args.concurrency, "uvicorn_workers": args.workers,
                           "records_per_request": 1, "redis": bool(args.redis),
                           "postgres_synchronous_commit": sync_commit, "enroll_seconds": round(enroll_s, 1),
                           "telemetry_commits_seen": commits,
                           "requests_per_commit": round(tel.summary()["requests"] / commits, 1) if commits else None,
                           "cpus": os.cpu_count(),
                           # The machine is shared: the 1-minute load average before and after says
                           # how much of it other processes took.
                           "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 devices, 15 s per phase")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--devices", type=int, help="devices to enroll (default 10,000; quick 2,000)")
    p.add_argument("--duration", type=float, help="seconds per phase (default 60; quick 15)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--redis", default=None, help="Redis URL for rate limits (default: none)")
    args = p.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
