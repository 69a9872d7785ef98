"""Per-process cache of bearer-token lookups. A revoked token stops working within `ttl_s`
(<= 1 s) on every replica: before a cached entry is trusted, the cache makes sure it has read the
revocation log (an append-only table) within the last `ttl_s` seconds, and evicts what was
revoked. A miss costs one indexed query; a hit costs nothing but that periodic check."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from control_plane.services import auth as auth_service
from control_plane.services.auth import Principal
from control_plane.services.uow import Database

logger = logging.getLogger(__name__)


class TokenCache:
    def __init__(self, db: Database, *, ttl_s: float, max_entries: int = 200_000) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Principal] = OrderedDict()
        self._last_revocation_id = 0
        self._checked_at = float("-inf")  # monotonic time the revocation log was last read
        self._lock = asyncio.Lock()
        self.hits = 0
        self.misses = 0

    async def start(self) -> None:
        self._last_revocation_id = await self.db.run(auth_service.latest_revocation_id)
        self._checked_at = time.monotonic()

    async def _refresh(self) -> None:
        async with self._lock:
            started = time.monotonic()
            if started - self._checked_at < self.ttl_s:
                return  # another request refreshed while we waited
            last, hashes = await self.db.run(auth_service.revocations_since, self._last_revocation_id)
            for h in hashes:
                self._entries.pop(h, None)
            self._last_revocation_id = last
            self._checked_at = started

    async def lookup(self, token_hash: str, kind: str) -> Principal | None:
        if self.ttl_s <= 0:
            return await auth_service.principal_for_hash_async(self.db.engine, token_hash, kind)
        if time.monotonic() - self._checked_at >= self.ttl_s:
            await self._refresh()
        p = self._entries.get(token_hash)
        if p is not None:
            self.hits += 1
            return p
        self.misses += 1
        p = await auth_service.principal_for_hash_async(self.db.engine, token_hash, kind)
        # A revocation committed after this read is still caught: every refresh re-reads the
        # revocations of the last minutes, so the next one (within ttl_s) evicts this entry.
        if p is not None:
            self._entries[token_hash] = p
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return p

    def forget(self, token_hash: str | None) -> None:
        """Evict at once (this process revoked it)."""
        if token_hash:
            self._entries.pop(token_hash, None)
