"""Fixtures: a fresh PostgreSQL database and a SQLite file per test session (migrated with
Alembic), real Redis under a per-run key prefix, a running app per test, and helpers to make
devices, keys, sketches and versions. Every table is emptied before each test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from control_plane.db.engine import make_sync_engine
from control_plane.db.migrate import upgrade
from control_plane.db.models import Base
from control_plane.main import create_app
from control_plane.services import auth
from control_plane.services.store import FleetStore
from control_plane.settings import Settings
from tests.control_plane.cp_helpers import REDIS_URL, Dev, make_device, redis_key_prefix
from tests.scratch_db import scratch_postgres

TABLES = [t.name for t in reversed(Base.metadata.sorted_tables)]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with scratch_postgres("qsae_cp_test") as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'fleet.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix("qsae-test") as prefix:
        yield prefix


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def _empty_tables(url: str) -> None:
    engine = make_sync_engine(url)
    with engine.begin() as conn:
        for t in TABLES:  # DELETE beats TRUNCATE on tiny tables
            conn.execute(text(f"DELETE FROM {t}"))
    engine.dispose()


@pytest.fixture
def settings(db_url: str, redis_prefix: str, tmp_path: Any) -> Settings:
    _empty_tables(db_url)
    return Settings(database_url=db_url, redis_url=REDIS_URL, redis_prefix=f"{redis_prefix}{uuid.uuid4().hex[:6]}:",
                    state_dir=tmp_path / "state", token_cache_ttl_s=0.5, rate_limit_per_minute=1000,
                    noop_endpoint=True, touch_interval_s=0.0, max_sketch_bytes=262_144, max_body_bytes=200_000,
                    max_telemetry_records=50, db_pool_size=4)


@pytest.fixture
def store(settings: Settings) -> Iterator[FleetStore]:
    s = FleetStore(settings)
    yield s
    s.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def keys(store: FleetStore) -> dict[str, str]:
    """One API key per role."""
    return {role: store.db.run(auth.create_api_key, name=role, role=role, actor="test")[1]
            for role in ("viewer", "operator", "admin")}


@pytest.fixture
def device(client: TestClient, keys: dict[str, str]) -> Dev:
    return make_device(client, keys)


