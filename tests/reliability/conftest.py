"""Fixtures of the reliability and security tests: a fresh PostgreSQL database on the machine's
server (migrated with Alembic) and the machine's Redis under a per-run key prefix, the app
in-process (TestClient) and, for what needs real HTTP, uvicorn in a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.main import create_app
from control_plane.services import auth
from control_plane.services.store import FleetStore
from control_plane.settings import Settings
from tests.control_plane.cp_helpers import REDIS_URL, redis_key_prefix
from tests.reliability.helpers import ROOT, Dev, bearer, new_device
from tests.scratch_db import scratch_postgres
from workers.demo import free_port, stop_process, wait_healthy

ROLES = ("viewer", "operator", "admin")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with scratch_postgres("qsae_rel_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix("qsae-rel-test") as prefix:
        yield prefix


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server state folder (artifacts, signing key) per test module."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def settings(pg_url: str, redis_prefix: str, state_dir: Path) -> Settings:
    return Settings(database_url=pg_url, redis_url=REDIS_URL, redis_prefix=f"{redis_prefix}{uuid.uuid4().hex[:6]}:",
                    state_dir=state_dir, token_cache_ttl_s=0.5, rate_limit_per_minute=0, touch_interval_s=0.0,
                    db_pool_size=4)


@pytest.fixture(scope="module")
def store(settings: Settings) -> Iterator[FleetStore]:
    s = FleetStore(settings)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def keys(store: FleetStore) -> dict[str, str]:
    """One API key per role."""
    return {role: store.db.run(auth.create_api_key, name=f"{role}-{uuid.uuid4().hex[:6]}", role=role,
                               actor="test")[1] for role in ROLES}


@pytest.fixture(scope="module")
def two_devices(client: TestClient, keys: dict[str, str]) -> tuple[Dev, Dev]:
    return new_device(client, keys["operator"]), new_device(client, keys["operator"])


class LiveServer:
    """The control plane as `qsae-fleet serve` runs it (uvicorn, its HTTP protocol) in a subprocess."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "serve", "--no-migrate", "--host", "127.0.0.1",
                 "--port", str(self.port)], cwd=ROOT, env=env, stdout=fh, stderr=fh)
        if wait_healthy(f"{self.url}/readyz", 30, alive=lambda: self.proc.poll() is None):
            return
        if self.proc.poll() is not None:
            raise RuntimeError(f"control plane exited: {log.read_text()[-2000:]}")
        self.close()
        raise RuntimeError(f"control plane did not become ready: {log.read_text()[-2000:]}")

    def close(self) -> None:
        stop_process(self.proc)


def live_env(settings: Settings, admin_key: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update({"FLEET_DATABASE_URL": str(settings.database_url), "FLEET_REDIS_URL": str(settings.redis_url),
                "FLEET_REDIS_PREFIX": settings.redis_prefix, "FLEET_STATE_DIR": str(settings.state_dir),
                "FLEET_BOOTSTRAP_ADMIN_KEY": admin_key, "FLEET_LOG_LEVEL": "WARNING",
                "FLEET_RATE_LIMIT_PER_MINUTE": "0", **extra})
    return env


@pytest.fixture(scope="module")
def live_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start live servers with `live_factory(env)`; all are stopped after the module."""
    servers: list[LiveServer] = []

    def start(env: dict[str, str]) -> LiveServer:
        server = LiveServer(env, tmp_path_factory.mktemp("live") / "server.log")
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


__all__ = ["bearer"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how many requests the API fuzzing generated (issue 9 asks for the number)."""
    test_fuzz = sys.modules.get("tests.reliability.test_fuzz")  # only when it ran
    if test_fuzz is not None and test_fuzz.CASES:
        terminalreporter.write_line(f"schemathesis: {sum(test_fuzz.CASES.values())} generated requests over "
                                    f"{len(test_fuzz.CASES)} operations of the OpenAPI")
