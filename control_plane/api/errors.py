"""One place maps errors to HTTP: domain errors to their status with an actionable `detail`,
malformed wire formats to 422 (413 over a size cap), a lost database to 503, anything else to a
logged 500 that is never disguised as a 4xx."""

from __future__ import annotations

import logging

from asyncpg.exceptions import CannotConnectNowError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from control_plane.errors import ControlPlaneError
from qsae_shared.errors import SizeLimitError, WireFormatError

logger = logging.getLogger(__name__)


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ControlPlaneError)
    if exc.status_code >= 500:
        logger.error("%s %s: %s", request.method, request.url.path, exc)
    return _json(exc.status_code, str(exc), exc.headers())


async def wire_format_error(request: Request, exc: Exception) -> JSONResponse:
    status = 413 if isinstance(exc, SizeLimitError) else 422
    return _json(status, str(exc))


# PostgreSQL's answer to text it cannot store (a NUL character, an invalid encoding): only a
# client sends such text, so it is the client's error, not the server's.
UNSTORABLE_TEXT = ("22021", "22P05")  # character_not_in_repertoire, untranslatable_character


# PostgreSQL's answers while it shuts down or starts up (admin_shutdown, crash_shutdown,
# cannot_connect_now), and connection exceptions (class 08): unavailable, retry shortly.
UNAVAILABLE_STATES = ("57P01", "57P02", "57P03")


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    return state in UNAVAILABLE_STATES or state.startswith("08")


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    if _unavailable(exc):
        logger.error("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        return _json(503, "the database is unavailable right now; retry shortly", {"Retry-After": "5"})
    if getattr(getattr(exc, "orig", None), "sqlstate", None) in UNSTORABLE_TEXT:
        return _json(422, "the request holds text that cannot be stored (a NUL character or invalid UTF-8); "
                          "remove it and retry")
    return await unexpected_error(request, exc)


async def connection_error(request: Request, exc: Exception) -> JSONResponse:
    """asyncpg raises the socket's own error (not a DBAPIError) when the database refuses new
    connections, e.g. while it restarts: that is a 503 to retry, not a server bug."""
    logger.error("%s %s: database unreachable: %s", request.method, request.url.path, exc)
    return _json(503, "the database is unavailable right now; retry shortly", {"Retry-After": "5"})


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, "internal server error; the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ControlPlaneError, domain_error)
    app.add_exception_handler(WireFormatError, wire_format_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(ConnectionError, connection_error)
    app.add_exception_handler(CannotConnectNowError, connection_error)
    app.add_exception_handler(Exception, unexpected_error)
