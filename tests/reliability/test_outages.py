"""What devices and operators see while a dependency is down: without the database every API
call is a 503 with Retry-After (the agent retries it; nothing is acknowledged that was not
stored), never a 500; without Redis the API keeps working (rate limits and wake-ups degrade)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from control_plane.main import create_app
from control_plane.settings import Settings
from tests.control_plane.cp_helpers import record
from tests.reliability.helpers import bearer, new_device
from workers.demo import free_port


def test_without_the_database_the_api_answers_503_with_retry_after(tmp_path) -> None:
    dead = free_port()  # nothing listens there: connections are refused, as while PostgreSQL restarts
    settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{dead}/fleet", state_dir=tmp_path,
                        token_cache_ttl_s=0.5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        token = "qd_" + uuid.uuid4().hex * 2
        calls = [c.post("/api/v1/devices/d-1/telemetry", headers=bearer(token), json={"records": [record(0)]}),
                 c.get("/api/v1/devices/d-1/assignment", headers=bearer(token)),
                 c.get("/api/v1/devices", headers=bearer("qk_" + uuid.uuid4().hex * 2)),
                 c.post("/api/v1/enroll", json={"enrollment_token": "qe_" + uuid.uuid4().hex})]
        for r in calls:
            assert r.status_code == 503, (r.request.url, r.status_code, r.text)
            assert int(r.headers["Retry-After"]) > 0 and "retry" in r.json()["detail"]


def test_without_redis_devices_and_operators_carry_on(settings, keys, tmp_path) -> None:
    no_redis = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                           "rate_limit_per_minute": 100})
    with TestClient(create_app(no_redis), raise_server_exceptions=False) as c:
        dev = new_device(c, keys["operator"])
        r = c.post(f"/api/v1/devices/{dev.id}/telemetry", headers=dev.auth, json={"records": [record(0)]})
        assert r.status_code == 200 and r.json() == {"acked": [0]}
        assert c.get(f"/api/v1/devices/{dev.id}/assignment", headers=dev.auth).status_code == 200
        assert c.get("/readyz").status_code == 503  # ... and readiness says Redis is missing


@pytest.mark.parametrize("sqlstate,status", [("57P03", 503), ("57P01", 503), ("08006", 503), ("22021", 422),
                                             ("42P01", 500)])
def test_database_errors_map_by_sqlstate(sqlstate: str, status: int) -> None:
    """While PostgreSQL starts up ("the database system is starting up", 57P03) the driver's error is
    a plain DBAPIError: it must still be a 503 to retry (the benchmark's postgres_restart saw 500s)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy.exc import DBAPIError

    from control_plane.api.errors import database_error

    orig = Exception("the database system is starting up")
    orig.sqlstate = sqlstate
    request = Request({"type": "http", "method": "GET", "path": "/api/v1/devices", "headers": []})
    # In a thread of its own: a session-wide browser fixture may hold this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        r = pool.submit(asyncio.run, database_error(request, DBAPIError("SELECT 1", {}, orig))).result()
    assert r.status_code == status
    if status == 503:
        assert r.headers["Retry-After"]
