"""Throwaway Redis and PostgreSQL servers on free loopback ports, owned by the benchmark (never the
machine's shared 6379 / 5432): started, killed and restarted by PID, removed at the end."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from workers import demo

logger = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("QSAE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SHARED_PORTS = (5432, 6379)


def free_port() -> int:
    """A free loopback port, never one of the machine's shared servers'."""
    while True:
        port = demo.free_port()
        if port not in SHARED_PORTS:
            return port


def wait_port(port: int, timeout_s: float, up: bool = True) -> bool:
    """Wait until 127.0.0.1:port accepts connections (or stops accepting, with up=False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                 "--dir", str(self.dir), "--protected-mode", "yes"], stdout=log, stderr=log)
        if not wait_port(self.port, 10):
            raise RuntimeError(f"redis-server did not start on port {self.port}: see {self.dir / 'redis.log'}")

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        demo.stop_process(self.proc)
        self.proc = None


class PostgresServer:
    """An initdb'd cluster under `workdir` (run as the `postgres` user when we are root), default
    durability (fsync on, synchronous_commit on)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.root = workdir / "postgres"
        self.data = self.root / "data"
        self.port = port or free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/fleet"
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        out = subprocess.run(self._as_postgres(*cmd), capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {out.stderr[-1500:] or out.stdout[-1500:]}")

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE fleet")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"),
                  "-w", "-t", "60", "start")

    @property
    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split("\n")[0])
        return None

    def crash(self) -> None:
        """Stop in `immediate` mode: no checkpoint, clients cut, crash recovery at the next start
        (what a killed or power-cycled database server goes through)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
