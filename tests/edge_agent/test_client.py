import httpx
import pytest

from edge_agent.client import FleetClient
from edge_agent.errors import RejectedError, RetryableError


def _client(handler):
    return FleetClient("http://127.0.0.1:1", token="t", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(status):
    c = _client(lambda req: httpx.Response(status, json={"detail": "boom"}))
    with pytest.raises(RetryableError, match="boom"):
        c.post_telemetry("d", [])


def test_429_is_retryable_with_retry_after():
    c = _client(lambda req: httpx.Response(429, headers={"Retry-After": "17"}, json={"detail": "slow down"}))
    with pytest.raises(RetryableError) as info:
        c.post_events("d", [])
    assert info.value.retry_after == 17


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_are_rejected_with_the_servers_reason(status):
    c = _client(lambda req: httpx.Response(status, json={"detail": "sketch header lacks seq"}))
    with pytest.raises(RejectedError) as info:
        c.post_sketch("d", b"x")
    assert info.value.status_code == status and info.value.reason == "sketch header lacks seq"


def test_transport_error_is_retryable():
    def handler(req):
        raise httpx.ConnectError("refused", request=req)
    with pytest.raises(RetryableError, match="ConnectError"):
        _client(handler).get_assignment("d")


def test_assignment_etag_round_trip():
    seen = []

    def handler(req):
        seen.append((req.headers.get("If-None-Match"), req.url.params.get("wait")))
        if req.headers.get("If-None-Match") == '"e1"':
            return httpx.Response(304)
        return httpx.Response(200, headers={"ETag": '"e1"'},
                              json={"desired_version": None, "manifest": None, "reason": "none yet"})
    c = _client(handler)
    a = c.get_assignment("d")
    assert a.etag == '"e1"' and a.reason == "none yet"
    assert c.get_assignment("d", etag=a.etag, wait_s=5) is None
    assert seen == [(None, None), ('"e1"', "5")]
