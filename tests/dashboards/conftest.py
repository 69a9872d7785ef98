"""Fixtures for the browser tests: one seeded control plane and one headless Chromium per session
(Debian's /usr/bin/chromium driven by Playwright, see RECIPES.md), a fresh browser context per
test, and a page that records console errors, page errors and failed requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.dashboards.fleet_server import LiveServer, live_server, seed

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Fast polling so live updates show within a second (the default is 5 s).
POLL_MS = 500


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("dashboard-fleet")) as live:
        seed(live)
        yield live


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system` installs it (apt-get install -y chromium); "
                    "never `playwright install`", pytrace=False)
    with sync_playwright() as p:
        # Playwright starts Chromium on a fresh temporary user-data dir; each test gets its own
        # context (cookies, sessionStorage) on top.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Console:
    """What the browser complained about while a test ran."""

    errors: list[str] = field(default_factory=list)  # console.error and failed-resource messages
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    failed_requests: list[str] = field(default_factory=list)  # network failures (no response)

    def unexpected(self) -> list[str]:
        # The role probe (until the API has GET /me) answers 403/422 on purpose; see model.js.
        errors = [e for e in self.errors if "role_probe=1" not in e]
        return errors + self.page_errors + self.failed_requests


@dataclass
class Session:
    page: Any
    console: Console
    base: str  # http://127.0.0.1:PORT/dashboard/

    def goto(self, route: str) -> None:
        self.page.goto(f"{self.base}?poll={POLL_MS}#/{route.lstrip('#/')}")

    def testid(self, tid: str) -> Any:
        return self.page.get_by_test_id(tid)


@pytest.fixture
def open_session(browser: Any, fleet: LiveServer) -> Iterator[Callable[..., Session]]:
    """open_session(role) -> a signed-in Session on the fleet page (role None: not signed in)."""
    contexts = []

    def make(role: str | None = "operator", viewport: tuple[int, int] = (1400, 1000)) -> Session:
        ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(10_000)
        console = Console()
        page.on("console", lambda m: m.type == "error" and console.errors.append(
            f"{m.text} @ {m.location.get('url', '')}"))
        page.on("pageerror", lambda e: console.page_errors.append(str(e)))
        page.on("requestfailed", lambda r: console.failed_requests.append(f"{r.method} {r.url}: {r.failure}"))
        s = Session(page, console, f"{fleet.url}/dashboard/")
        s.goto("fleet")
        if role is not None:
            s.testid("api-key").fill(fleet.keys[role])
            s.testid("login-submit").click()
            s.testid("device-table").locator("tbody tr[data-key]").first.wait_for()
        return s

    yield make
    for ctx in contexts:
        ctx.close()
