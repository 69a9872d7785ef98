"""uvicorn's HTTP protocol (httptools) with a deadline on request headers.

uvicorn bounds the size of a request's headers but not the time they take: a client that sends
half a header line and then nothing (a slowloris client) holds its connection for ever. With
this protocol a connection whose request headers are not complete `header_timeout_s` after it
opened (or, on keep-alive, after the previous response) is closed. Slow bodies are handled in
the app (`control_plane.metrics.BodyLimitMiddleware`: 408 when the body stalls).

    uvicorn.run(app, http=header_deadline_protocol(10.0))     # what `qsae-fleet serve` does
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0  # seconds a client has to send a request's headers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.info("closing a connection whose request headers took over %.0f s", self.header_timeout_s)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle, waiting for the next request's headers
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(header_timeout_s: float) -> type[Any]:
    """The protocol class with the given deadline (uvicorn takes a class, not an instance)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": float(header_timeout_s)})
