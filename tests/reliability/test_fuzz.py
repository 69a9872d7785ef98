"""Schemathesis over the whole OpenAPI of a running control plane (`qsae-fleet serve`, PostgreSQL,
Redis), authenticated: device operations with a device's own token (and its id in the path, so
the handlers behind the auth check are reached), every other operation with an admin key. No
generated request may get a 5xx. The number of generated cases is printed in the test summary."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from tests.reliability.conftest import live_env
from tests.reliability.helpers import bearer, new_device

ADMIN = f"qk_fuzz_{uuid.uuid4().hex}"
# Generated examples per operation (~45 operations; schemathesis adds the schema's explicit
# examples): about half a minute here. QSAE_FUZZ_EXAMPLES=200 QSAE_FUZZ_RANDOM=1 for a deep run.
EXAMPLES_PER_OPERATION = int(os.environ.get("QSAE_FUZZ_EXAMPLES", "8"))
DERANDOMIZE = os.environ.get("QSAE_FUZZ_RANDOM", "") == ""  # the suite runs the same cases every time
CASES: dict[str, int] = {}  # operation -> cases sent (read by conftest's terminal summary)
MIN_CASES = 250



def _openapi() -> dict[str, Any]:
    """The OpenAPI document of the app the live server runs (built without starting it; the lazy
    fixture loader of schemathesis 4.32 does not work with pytest 9)."""
    import tempfile

    from control_plane.main import create_app
    from control_plane.settings import Settings

    return create_app(Settings(state_dir=tempfile.gettempdir())).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@pytest.fixture(scope="module")
def fuzz_server(settings, live_factory):
    return live_factory(live_env(settings, ADMIN, FLEET_REDIS_PREFIX=f"{settings.redis_prefix}fuzz:"))


@pytest.fixture(scope="module")
def fuzz_device(fuzz_server):
    import httpx

    with httpx.Client(base_url=fuzz_server.url, timeout=10) as c:
        return new_device(c, ADMIN)


def _is_device_operation(case: Any) -> bool:
    return "device" in (case.operation.definition.raw.get("tags") or []) and "device_id" in case.path_parameters


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
def test_no_generated_request_gets_a_server_error(case, fuzz_server, fuzz_device) -> None:
    if _is_device_operation(case):
        case.path_parameters["device_id"] = fuzz_device.id
        headers = fuzz_device.auth
    else:
        headers = bearer(ADMIN)
    response = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)
    label = case.operation.label
    CASES[label] = CASES.get(label, 0) + 1
    assert response.status_code < 500, (f"{label} -> {response.status_code}: {response.text[:500]}\n"
                                        f"reproduce: {case.as_curl_command(headers=headers)}")


def test_the_served_schema_is_the_fuzzed_one(fuzz_server) -> None:
    import httpx

    served = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=10).json()
    assert served["paths"].keys() == _openapi()["paths"].keys()


def test_the_fuzzing_covered_every_operation() -> None:
    operations = {op.label for op in (r.ok() for r in schema.get_all_operations())}
    assert operations <= set(CASES), f"operations never fuzzed: {sorted(operations - set(CASES))}"
    assert sum(CASES.values()) >= MIN_CASES
