"""Units of work: every service call runs in one transaction that commits at its end or rolls back
on any error, so no request leaves anything half-written. After a commit the notes the service left
(assignment changed, job enqueued) go to the bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db.engine import make_async_engine, make_sync_engine

P = ParamSpec("P")
R = TypeVar("R")
Note = tuple[str, object]
_NOTES = "post_commit_notes"


def note(s: Session, kind: str, value: object) -> None:
    """Leave a signal to publish once this transaction has committed."""
    s.info.setdefault(_NOTES, []).append((kind, value))


def _take_notes(s: Session) -> list[Note]:
    return s.info.pop(_NOTES, [])


class Database:
    """The API's database: async engine; service functions (sync, taking a Session) run through
    `run` on it."""

    def __init__(self, url: str, pool_size: int = 10,
                 on_commit: Callable[[Iterable[Note]], Awaitable[None]] | None = None) -> None:
        self.engine: AsyncEngine = make_async_engine(url, pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.on_commit = on_commit
        self.dialect = self.engine.dialect.name

    async def run(self, fn: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        session: AsyncSession
        async with self.sessions() as session:
            async with session.begin():
                result = await session.run_sync(fn, *args, **kwargs)
            notes = _take_notes(session.sync_session)
        if notes and self.on_commit is not None:
            await self.on_commit(notes)
        return result

    async def dispose(self) -> None:
        await self.engine.dispose()


class SyncDatabase:
    """The same for sync callers (CLI, dispatcher, controller)."""

    def __init__(self, url: str, pool_size: int = 5,
                 on_commit: Callable[[Iterable[Note]], None] | None = None) -> None:
        self.engine: Engine = make_sync_engine(url, pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.on_commit = on_commit
        self.dialect = self.engine.dialect.name

    def run(self, fn: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        with self.sessions() as session:
            with session.begin():
                result = fn(session, *args, **kwargs)
            notes = _take_notes(session)
        if notes and self.on_commit is not None:
            self.on_commit(notes)
        return result

    def dispose(self) -> None:
        self.engine.dispose()


def one_or_404(obj: Any, what: str) -> Any:
    from control_plane.errors import NotFoundError

    if obj is None:
        raise NotFoundError(f"{what} does not exist")
    return obj
