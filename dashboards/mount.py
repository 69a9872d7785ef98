"""Serve the static operator UI (`dashboards/web/`) from a FastAPI app under `/dashboard`.

The UI is plain HTML, CSS and ES modules with vendored libraries: no build step and no CDN. It talks
to the operator API under `/api/v1` of the same origin with the key the operator typed in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

logger = logging.getLogger(__name__)

# Folder of the static files (index.html, js/, style.css, vendor/).
WEB_DIR = Path(__file__).resolve().parent / "web"
# URL prefix the UI is served under.
DASHBOARD_PATH = "/dashboard"

# Everything the page loads comes from this origin: a CDN reference fails loudly in the browser.
# uPlot sizes its canvas and legend through inline styles, hence 'unsafe-inline' for styles only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


class _DashboardFiles(StaticFiles):
    """StaticFiles with a strict content security policy; the app shell and our own modules are
    revalidated on every load (so an upgrade shows at once), vendored libraries are cached."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if path.startswith("vendor/"):
            response.headers.setdefault("Cache-Control", "public, max-age=86400")
        else:
            response.headers["Cache-Control"] = "no-cache"
        return response


def mount(app: FastAPI, path: str = DASHBOARD_PATH) -> None:
    """Serve the operator UI under `path` (`/dashboard/` is the app shell; `/dashboard` redirects)."""
    if not (WEB_DIR / "index.html").is_file():
        raise FileNotFoundError(f"dashboard files missing: {WEB_DIR / 'index.html'} (broken install?)")
    prefix = path.rstrip("/")

    async def _redirect() -> RedirectResponse:
        return RedirectResponse(url=prefix + "/", status_code=307)

    app.add_api_route(prefix, _redirect, methods=["GET"], include_in_schema=False)
    app.mount(prefix, _DashboardFiles(directory=WEB_DIR, html=True), name="dashboard")
    logger.info("dashboard mounted at %s/ from %s", prefix, WEB_DIR)
