"""Limits, over real HTTP (uvicorn on 127.0.0.1): body caps (declared and chunked), sketch size and
dimension caps, telemetry batch size, per-device rate limits, and slow clients that never finish
their request."""

from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest

from tests.control_plane.cp_helpers import record
from tests.reliability.conftest import live_env
from tests.reliability.helpers import bearer, new_device, sketch

ADMIN = f"qk_limits_{uuid.uuid4().hex}"
RATE = 30  # requests per device per minute in this server
BODY_CAP = 20_000
SKETCH_CAP = 65_536
CLIENT_TIMEOUT_S = 2.0  # FLEET_CLIENT_TIMEOUT_S of this server
SLOW_CLIENT_S = CLIENT_TIMEOUT_S + 2.0  # how long a stalled client may hold a connection, with slack


@pytest.fixture(scope="module")
def server(settings, live_factory):
    env = live_env(settings, ADMIN, FLEET_MAX_BODY_BYTES=str(BODY_CAP), FLEET_MAX_SKETCH_BYTES=str(SKETCH_CAP),
                   FLEET_MAX_TELEMETRY_RECORDS="50", FLEET_RATE_LIMIT_PER_MINUTE=str(RATE),
                   FLEET_CLIENT_TIMEOUT_S=str(CLIENT_TIMEOUT_S),
                   FLEET_REDIS_PREFIX=f"{settings.redis_prefix}limits-{uuid.uuid4().hex[:6]}:")
    return live_factory(env)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def fresh_device(http: httpx.Client):
    return new_device(http, ADMIN)


def test_json_body_over_the_cap_is_413_declared_or_chunked(http: httpx.Client) -> None:
    dev = fresh_device(http)
    url = f"/api/v1/devices/{dev.id}/telemetry"
    big = b'{"records": [' + b",".join(b'{"pad": "' + b"x" * 1000 + b'"}' for _ in range(30)) + b"]}"
    assert len(big) > BODY_CAP
    r = http.post(url, content=big, headers={**dev.auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and "cap" in r.json()["detail"]

    def chunks():  # no Content-Length: the server counts as it reads
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    r = http.post(url, content=chunks(), headers={**dev.auth, "Content-Type": "application/json"})
    assert r.status_code == 413
    ok = http.post(url, json={"records": [record(0)]}, headers=dev.auth)  # the connection and the device still work
    assert ok.status_code == 200 and ok.json() == {"acked": [0]}


def test_too_many_telemetry_records_is_422(http: httpx.Client) -> None:
    dev = fresh_device(http)
    r = http.post(f"/api/v1/devices/{dev.id}/telemetry", json={"records": [record(i) for i in range(51)]},
                  headers=dev.auth)
    assert r.status_code == 422 and "at most 50" in r.json()["detail"]


@pytest.mark.parametrize("dims,status,reason", [
    ({"channels": 600, "hw": 1, "n": 1}, 422, "channel"),  # over 512 channels
    ({"channels": 1, "hw": 65, "n": 1}, 422, "spatial"),  # over 64 x 64 per channel
    ({"channels": 2, "hw": 4, "n": 2, "bins": 300}, 422, "bin"),  # over 256 histogram bins
    ({"channels": 32, "hw": 14, "n": 400, "max_bytes": 512 * 1024}, 413, "cap"),  # over the byte cap
])
def test_sketch_dimension_and_size_caps(http: httpx.Client, dims: dict, status: int, reason: str) -> None:
    dev = fresh_device(http)
    data = sketch(dev.id, **dims)
    r = http.post(f"/api/v1/devices/{dev.id}/sketches", content=data,
                  headers={**dev.auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"].lower()
    ok = http.post(f"/api/v1/devices/{dev.id}/sketches", content=sketch(dev.id, seq=1),
                   headers={**dev.auth, "Content-Type": "application/octet-stream"})
    assert ok.status_code == 200 and ok.json()["stored"] is True


def test_rate_limit_per_device_with_retry_after(http: httpx.Client) -> None:
    if 60 - time.time() % 60 < 10:  # the limit counts per wall-clock minute: start a fresh one
        time.sleep(60 - time.time() % 60 + 0.1)
    noisy, quiet = fresh_device(http), fresh_device(http)
    statuses = [http.get(f"/api/v1/devices/{noisy.id}/assignment", headers=noisy.auth).status_code
                for _ in range(RATE + 5)]
    assert statuses[:RATE] == [200] * RATE
    assert set(statuses[RATE:]) == {429}
    r = http.get(f"/api/v1/devices/{noisy.id}/assignment", headers=noisy.auth)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert "slow down" in r.json()["detail"]
    assert http.get(f"/api/v1/devices/{quiet.id}/assignment", headers=quiet.auth).status_code == 200


def _raw(server_port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server_port), timeout=SLOW_CLIENT_S + 10)
    return s


def _answer_or_close(s: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server answered or closed the connection, and what it sent."""
    t0 = time.monotonic()
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                break
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - t0, data


def test_a_body_that_never_arrives_is_cut_off(server, http: httpx.Client) -> None:
    dev = fresh_device(http)
    s = _raw(server.port)
    head = (f"POST /api/v1/devices/{dev.id}/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {dev.token}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
    s.sendall(head.encode() + b'{"records": [')  # ... and then nothing more
    waited, answer = _answer_or_close(s)
    s.close()
    assert waited < SLOW_CLIENT_S, f"the server held a stalled upload for {waited:.1f} s"
    assert answer.split(b" ")[1] == b"408", answer[:300]


def test_headers_that_never_finish_are_cut_off(server) -> None:
    s = _raw(server.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # a slowloris client
    waited, _ = _answer_or_close(s)
    s.close()
    assert waited < SLOW_CLIENT_S, f"the server held half-sent headers for {waited:.1f} s"


def test_limits_do_not_hurt_well_behaved_devices(http: httpx.Client) -> None:
    dev = fresh_device(http)
    r = http.post(f"/api/v1/devices/{dev.id}/telemetry", json={"records": [record(i) for i in range(50)]},
                  headers=dev.auth)
    assert r.status_code == 200 and len(r.json()["acked"]) == 50
    assert http.get("/api/v1/fleet/summary", headers=bearer(ADMIN)).status_code == 200
