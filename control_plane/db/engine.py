"""Engines from one database URL: asyncpg / aiosqlite for the API, psycopg / sqlite3 for sync
callers (CLI, migrations, the dispatcher and controller)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+pysqlite"}
_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def _backend(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in _SYNC_DRIVERS:
        raise ValueError(f"unsupported database {url!r}: use sqlite:///PATH or postgresql://...")
    return backend


def sync_url(url: str) -> str:
    """The URL with the driver sync code uses (keeps an explicit sync driver)."""
    u = make_url(url)
    backend = _backend(url)
    if u.drivername in ("postgresql+asyncpg", "sqlite+aiosqlite") or "+" not in u.drivername:
        u = u.set(drivername=_SYNC_DRIVERS[backend])
    return u.render_as_string(hide_password=False)


def async_url(url: str) -> str:
    u = make_url(url)
    return u.set(drivername=_ASYNC_DRIVERS[_backend(url)]).render_as_string(hide_password=False)


def _ensure_sqlite_dir(url: str) -> None:
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(engine_sync: Engine) -> None:
    """WAL, full fsync, foreign keys; and transactions that SQLAlchemy controls (the driver's own
    implicit BEGIN breaks savepoints), begun IMMEDIATE so a read-then-write transaction never
    fails on a lock upgrade: SQLite writers queue on busy_timeout instead."""

    @event.listens_for(engine_sync, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cur.execute("PRAGMA synchronous=FULL")  # an ack means the record is on disk
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    @event.listens_for(engine_sync, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sync_engine(url: str, pool_size: int = 5) -> Engine:
    _ensure_sqlite_dir(url)
    if _backend(url) == "sqlite":
        engine = create_engine(sync_url(url), poolclass=NullPool)
        _sqlite_pragmas(engine)
        return engine
    return create_engine(sync_url(url), pool_size=pool_size, pool_pre_ping=True)


def make_async_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    _ensure_sqlite_dir(url)
    if _backend(url) == "sqlite":
        engine = create_async_engine(async_url(url))
        _sqlite_pragmas(engine.sync_engine)
        return engine
    # No pre-ping: it costs a round trip per checkout on the hot path. A connection the server
    # dropped fails one request (503) and is replaced; pool_recycle retires idle ones.
    # No overflow either: connections opened and closed under bursts cost far more than waiting.
    return create_async_engine(async_url(url), pool_size=pool_size, max_overflow=0, pool_recycle=1800)
