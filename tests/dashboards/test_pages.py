"""The dashboard in a real browser (headless Chromium) against a running, seeded control plane:
every page loads cleanly, the figures shown are the API's, an operator acts, a viewer cannot,
and pages update live."""

from __future__ import annotations

import os
import re
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.dashboards.conftest import Session
from tests.dashboards.fleet_server import MLFLOW_UI, LiveServer

ROOT = Path(__file__).resolve().parents[2]
# Set QSAE_UPDATE_SCREENSHOTS=1 to refresh the committed PNGs under docs/img/.
SCREENSHOT_DIR = ROOT / "docs" / "img" if os.environ.get("QSAE_UPDATE_SCREENSHOTS") else None

STATE_TILES = ("healthy", "drifting", "retraining", "rolling_back", "offline")


def fixed(x: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed: the exact binary value, ties rounded up (Python's
    format rounds ties to even: 91.25 -> '91.2' where the page shows '91.3')."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def pct(x: float | None) -> str:
    return "—" if x is None else f"{fixed(x * 100, 1)} %"


def ratio(x: float | None) -> str:
    return "—" if x is None else f"{fixed(x, 1)}×"


def num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else fixed(x, digits)


def recent_accuracy(telemetry: list[dict[str, Any]], window_s: float = 3600) -> tuple[float | None, float | None]:
    """The fleet summary's definitions, per device: pooled labelled accuracy, mean estimate."""
    from datetime import datetime

    now = time.time()
    recs = [r for r in telemetry if datetime.fromisoformat(r["received_at"]).timestamp() >= now - window_s]
    labelled = sum(r["labelled_count"] for r in recs)
    correct = sum(r["labelled_correct"] for r in recs)
    est = [r["estimated_accuracy"] for r in recs if r["estimated_accuracy"] is not None]
    return (correct / labelled if labelled else None), (sum(est) / len(est) if est else None)


def device_page(s: Session, fleet: LiveServer, name: str) -> None:
    s.goto(f"devices/{fleet.devices[name]}")
    expect(s.testid("device-name")).to_have_text(name)


def shoot(s: Session, name: str, tmp_path: Path) -> Path:
    out = (SCREENSHOT_DIR or tmp_path) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    s.page.screenshot(path=str(out), full_page=False)
    return out


def test_login_rejects_an_unknown_key_and_keeps_nothing(open_session, fleet: LiveServer) -> None:
    s = open_session(None)
    s.testid("api-key").fill("qk_not-a-real-key")
    s.testid("login-submit").click()
    expect(s.testid("login-error")).to_contain_text("not accepted")
    assert s.page.evaluate("sessionStorage.getItem('qsae.apiKey')") is None
    s.testid("api-key").fill(fleet.keys["viewer"])
    s.testid("login-submit").click()
    expect(s.testid("role")).to_have_text(re.compile(r"(^|· )viewer$"))
    assert s.page.evaluate("sessionStorage.getItem('qsae.apiKey')") == fleet.keys["viewer"]


def test_every_page_loads_without_console_errors(open_session, fleet: LiveServer, tmp_path: Path) -> None:
    s = open_session("operator")
    expect(s.testid("fleet-accuracy-plot")).to_be_visible()
    shoot(s, "dashboard-fleet.png", tmp_path)
    for name in fleet.devices:
        device_page(s, fleet, name)
        expect(s.testid("device-jobs")).to_be_visible()
    device_page(s, fleet, "cam-01")
    expect(s.testid("device-accuracy-plot")).to_be_visible()
    shoot(s, "dashboard-device.png", tmp_path)
    for route, table in (("jobs", "jobs-table"), ("versions", "versions-table"), ("rollouts", "rollouts-table"),
                         ("policies", "policies-table")):
        s.goto(route)
        expect(s.testid(table).locator("tbody tr[data-key]").first).to_be_visible()
    s.page.wait_for_timeout(1200)  # two polling rounds on the last page
    assert s.console.unexpected() == []


def test_fleet_page_shows_the_api_figures(open_session, fleet: LiveServer) -> None:
    s = open_session("viewer")
    api = fleet.api("viewer")
    summary = api.get("/fleet/summary").json()
    devices = {d["id"]: d for d in api.get("/devices", params={"limit": 1000}).json()["items"]}
    for state in STATE_TILES:
        expect(s.testid(f"tile-{state}")).to_have_attribute("data-count", str(summary["by_state"][state]))
    expect(s.testid("tile-all")).to_have_attribute("data-count", str(summary["devices"]))
    expect(s.testid("fig-labelled")).to_contain_text(pct(summary["labelled_accuracy_1h"]))
    expect(s.testid("fig-estimated")).to_contain_text(pct(summary["estimated_accuracy_1h"]))
    expect(s.testid("fig-compression")).to_contain_text(ratio(summary["mean_compression_deployed"]))
    table = s.testid("device-table")
    expect(table.locator("tbody tr[data-key]")).to_have_count(len(devices))
    for dev_id, d in devices.items():
        row = table.locator(f'tr[data-key="{dev_id}"]')
        expect(row.locator('[data-col="name"]')).to_have_text(d["name"])
        expect(row.locator('[data-col="compression_ratio"]')).to_have_text(ratio(d["compression_ratio"]))
        expect(row.locator('[data-col="drift_score"]')).to_have_text(num(d["drift_score"]))
        labelled, estimated = recent_accuracy(api.get(f"/devices/{dev_id}").json()["telemetry"])
        expect(row.locator('[data-col="labelled"]')).to_have_text(pct(labelled))
        expect(row.locator('[data-col="estimated"]')).to_have_text(pct(estimated))
    # Fleet series from the devices' telemetry: 30 one-minute windows per reporting device.
    expect(s.testid("fleet-accuracy-chart")).to_have_attribute("data-points", re.compile(r"^labelled:\d+,estimated:\d+$"))
    expect(s.testid("fleet-compression-chart")).to_have_attribute("data-points", re.compile(r"^mean compression:\d+$"))
    # The seeded fleet has one device in each tile's state: a tile filters the table to it.
    s.testid("tile-drifting").click()
    expect(table.locator("tbody tr[data-key]")).to_have_count(summary["by_state"]["drifting"])
    expect(table.locator(f'tr[data-key="{fleet.devices["cam-02"]}"]')).to_be_visible()
    s.testid("tile-drifting").click()
    s.testid("device-search").fill("cam-0")
    expect(table.locator("tbody tr[data-key]")).to_have_count(len(devices))
    s.testid("device-search").fill("cam-04")
    expect(table.locator("tbody tr[data-key]")).to_have_count(1)
    s.testid("device-search").fill("")
    table.locator('th[data-col="compression_ratio"] button').click()
    table.locator('th[data-col="compression_ratio"] button').click()  # descending
    expect(table.locator("tbody tr[data-key]").first).to_have_attribute(
        "data-key", max(devices.values(), key=lambda d: d["compression_ratio"] or 0)["id"])
    assert s.console.unexpected() == []


def test_device_page_shows_the_api_figures_versions_and_mlflow_links(open_session, fleet: LiveServer) -> None:
    s = open_session("viewer")
    api = fleet.api("viewer")
    device_page(s, fleet, "cam-01")
    detail = api.get(f"/devices/{fleet.devices['cam-01']}").json()
    d = detail["device"]
    expect(s.testid("device-state")).to_contain_text("Healthy")
    expect(s.testid("dev-compression")).to_contain_text(ratio(d["compression_ratio"]))
    expect(s.testid("dev-drift")).to_contain_text(num(d["drift_score"]))
    labelled, estimated = recent_accuracy(detail["telemetry"])
    expect(s.testid("dev-labelled")).to_contain_text(pct(labelled))
    expect(s.testid("dev-estimated")).to_contain_text(pct(estimated))
    # The device switched version once in its telemetry: one marker on both charts.
    expect(s.testid("device-accuracy-chart")).to_have_attribute("data-markers", "1")
    expect(s.testid("device-compression-chart")).to_have_attribute("data-markers", "1")
    expect(s.testid("device-accuracy-chart")).to_have_attribute("data-points", "labelled:30,estimated:30")
    versions = s.testid("device-versions")
    expect(versions.locator("tbody tr[data-key]")).to_have_count(len(detail["versions"]))
    for v in detail["versions"]:
        row = versions.locator(f'tr[data-key="{v["id"]}"]')
        expect(row.locator('[data-col="compression_ratio"]')).to_have_text(ratio(v["compression_ratio"]))
        link = row.locator('[data-col="mlflow"] a')
        assert v["mlflow_url"] and v["mlflow_url"].startswith(MLFLOW_UI)
        expect(link).to_have_attribute("href", v["mlflow_url"])
    jobs = s.testid("device-jobs")
    expect(jobs.locator("tbody tr[data-key]")).to_have_count(len(detail["jobs"]))
    for j in detail["jobs"]:
        expect(s.testid("device-triggers")).to_contain_text(j["trigger_reason"])
    # The API has no per-unit importance yet: the page says so instead of drawing something.
    assert not any("importance" in v["metrics"] for v in detail["versions"])
    expect(s.testid("device-importance-chart")).to_contain_text("does not expose per-unit importance")

    device_page(s, fleet, "cam-03")  # retraining: its running job and progress
    running = api.get("/jobs", params={"device_id": fleet.devices["cam-03"], "status": "running"}).json()["items"][0]
    row = s.testid("device-jobs").locator(f'tr[data-key="{running["id"]}"]')
    expect(row.locator('[data-col="progress"]')).to_contain_text(f"{round(running['progress'] * 100)} %")
    expect(row.locator('[data-col="progress"]')).to_contain_text(running["progress_message"])
    assert s.console.unexpected() == []


def test_operator_reprunes_and_sees_the_job_appear(open_session, fleet: LiveServer) -> None:
    s = open_session("operator")
    api = fleet.api("operator")
    dev = fleet.devices["cam-06"]
    before = {j["id"] for j in api.get("/jobs", params={"device_id": dev}).json()["items"]}
    device_page(s, fleet, "cam-06")
    s.testid("action-reprune").click()
    dialog = s.page.locator("dialog[open]")
    dialog.locator('input[name="reason"]').fill("dashboard test")
    dialog.get_by_role("button", name="Queue retrain").click()
    expect(s.page.locator(".toast-ok")).to_contain_text("queued")
    jobs = api.get("/jobs", params={"device_id": dev}).json()["items"]
    new = [j for j in jobs if j["id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "queued" and "dashboard test" in new[0]["trigger_reason"]
    row = s.testid("device-jobs").locator(f'tr[data-key="{new[0]["id"]}"]')
    expect(row.locator('[data-col="status"]')).to_contain_text("queued")
    expect(s.testid("device-state")).to_contain_text("Retraining")
    s.goto("jobs")
    expect(s.testid("jobs-table").locator(f'tr[data-key="{new[0]["id"]}"]')).to_contain_text("dashboard test")
    assert s.console.unexpected() == []


def test_viewer_sees_but_cannot_act(open_session, fleet: LiveServer) -> None:
    s = open_session("viewer")
    expect(s.testid("role")).to_have_text(re.compile(r"(^|· )viewer$"))
    dev = fleet.devices["cam-01"]
    device_page(s, fleet, "cam-01")
    expect(s.testid("read-only-note")).to_be_visible()
    for action in ("reprune", "rollback", "pin"):
        expect(s.testid(f"action-{action}")).to_be_hidden()
    s.goto("rollouts")
    expect(s.testid("rollouts-table").locator("tbody tr[data-key]").first).to_be_visible()
    expect(s.testid("rollout-create")).to_be_hidden()
    expect(s.page.locator('[data-testid^="advance-"]:visible, [data-testid^="abort-"]:visible')).to_have_count(0)
    s.goto("policies")
    expect(s.testid("policies-table").locator('tr[data-key="default"]')).to_be_visible()
    expect(s.testid("policy-new")).to_be_hidden()
    expect(s.testid("policy-edit-default")).to_be_hidden()
    # And the API refuses the same request from this session's key.
    jobs_before = fleet.api("viewer").get("/jobs", params={"device_id": dev}).json()["total"]
    status = s.page.evaluate("""async (dev) => {
        const r = await fetch(`/api/v1/devices/${dev}/reprune`, {method: "POST",
          headers: {Authorization: `Bearer ${sessionStorage.getItem("qsae.apiKey")}`, "Content-Type": "application/json"},
          body: "{}"});
        return r.status; }""", dev)
    assert status == 403
    assert fleet.api("viewer").get("/jobs", params={"device_id": dev}).json()["total"] == jobs_before


def test_pages_update_live_without_reloading(open_session, fleet: LiveServer) -> None:
    s = open_session("operator")
    s.goto("jobs")
    job = fleet.api("viewer").get("/jobs", params={"status": "running"}).json()["items"][0]
    row = s.testid("jobs-table").locator(f'tr[data-key="{job["id"]}"]')
    expect(row.locator('[data-col="progress"]')).to_contain_text(f"{round(job['progress'] * 100)} %")
    s.page.evaluate("window.__sameDocument = true")
    fleet.store.update_job_progress(job["id"], 0.85, "recovery")
    expect(row.locator('[data-col="progress"]')).to_contain_text("85 %")
    expect(row.locator('[data-col="progress_message"]')).to_have_text("recovery")
    assert s.page.evaluate("window.__sameDocument") is True


def test_versions_page_links_selected_runs_to_mlflow_compare(open_session, fleet: LiveServer) -> None:
    s = open_session("viewer")
    s.goto("versions")
    versions = fleet.api("viewer").get("/versions").json()["items"]
    table = s.testid("versions-table")
    expect(table.locator("tbody tr[data-key]")).to_have_count(len(versions))
    expect(s.testid("mlflow-compare")).to_be_hidden()
    a, b = versions[0], versions[1]
    s.testid(f"select-{a['id']}").check()
    s.testid(f"select-{b['id']}").check()
    href = s.testid("mlflow-compare").get_attribute("href")
    assert href.startswith(f"{MLFLOW_UI}/#/compare-runs?runs=")
    assert a["mlflow_run_id"] in href and b["mlflow_run_id"] in href
    for v in versions:
        row = table.locator(f'tr[data-key="{v["id"]}"]')
        expect(row.locator('[data-col="kl"]')).to_have_text(num(v["kl"], 4))
        expect(row.locator('[data-col="status"]')).to_have_text(v["status"])


def test_operator_creates_pauses_resumes_advances_and_aborts_a_rollout(open_session, fleet: LiveServer) -> None:
    s = open_session("operator")
    api = fleet.api("operator")
    s.goto("rollouts")
    s.testid("rollout-create").click()
    s.testid("rollout-version").select_option("fmnist-cnn-fleet-0001")
    s.testid("rollout-cohort").fill("plant-a")
    s.testid("rollout-stages").fill("0.3, 0.6, 1.0")
    s.testid("rollout-submit").click()
    expect(s.page.locator(".toast-ok")).to_contain_text("started")
    rollout = next(r for r in api.get("/rollouts").json() if r["cohort"] == "plant-a")
    rid = rollout["id"]
    assert rollout["state"] == "active" and rollout["stages"] == [0.3, 0.6, 1.0]
    row = s.testid("rollouts-table").locator(f'tr[data-key="{rid}"]')
    expect(row.locator('[data-col="devices"]')).to_contain_text(str(rollout["devices"]))

    s.testid(f"pause-{rid}").click()
    expect(row.locator('[data-col="state"]')).to_have_text("paused")
    assert api.get(f"/rollouts/{rid}").json()["state"] == "paused"
    s.testid(f"resume-{rid}").click()
    expect(row.locator('[data-col="state"]')).to_have_text("active")
    s.testid(f"advance-{rid}").click()
    expect(s.page.locator(".toast-ok").last).to_contain_text("stage 2 of 3")
    assert api.get(f"/rollouts/{rid}").json()["stage"] == 1
    s.testid(f"abort-{rid}").click()
    s.page.locator("dialog[open]").get_by_role("button", name="Abort rollout").click()
    expect(row.locator('[data-col="state"]')).to_have_text("aborted")
    assert api.get(f"/rollouts/{rid}").json()["state"] == "aborted"
    assert s.console.unexpected() == []


@pytest.mark.parametrize("route", ["fleet", "jobs"])
def test_signed_out_visitors_are_sent_to_login(open_session, route: str) -> None:
    s = open_session(None)
    s.goto(route)
    expect(s.testid("login-form")).to_be_visible()
    assert httpx.get(s.base.replace("/dashboard/", "/api/v1/devices"), timeout=5).status_code == 401


def test_operator_pins_and_unpins_a_version(open_session, fleet: LiveServer) -> None:
    s = open_session("operator")
    api = fleet.api("operator")
    dev = fleet.devices["cam-05"]
    device_page(s, fleet, "cam-05")
    s.testid("action-pin").click()
    dialog = s.page.locator("dialog[open]")
    dialog.locator('select[name="version_id"]').select_option("fmnist-cnn-fleet-0001")
    dialog.locator('input[name="reason"]').fill("hold for the audit")
    dialog.get_by_role("button", name="Pin").click()
    expect(s.testid("device-state")).to_contain_text("pinned")
    d = api.get(f"/devices/{dev}").json()["device"]
    assert d["pinned"] is True and d["desired_version"] == "fmnist-cnn-fleet-0001"
    expect(s.testid("device-info")).to_contain_text("fmnist-cnn-fleet-0001")
    s.testid("action-unpin").click()
    expect(s.testid("device-state")).not_to_contain_text("pinned")
    assert api.get(f"/devices/{dev}").json()["device"]["pinned"] is False
    assert s.console.unexpected() == []


def _policy_form(s: Session) -> Any:
    return s.page.locator("dialog[open]")


def test_operator_adds_and_edits_a_cohort_policy_and_a_bad_value_changes_nothing(open_session, fleet: LiveServer) -> None:
    s = open_session("operator")
    api = fleet.api("operator")
    default = api.get("/policies/default").json()
    s.goto("policies")
    row = s.testid("policies-table").locator('tr[data-key="default"]')
    expect(row.locator('[data-col="kl_budget"]')).to_have_text(num(default["kl_budget"]))
    s.testid("policy-new").click()
    form = _policy_form(s)
    form.locator('input[name="name"]').fill("policy-page")
    form.locator('input[name="kl_budget"]').fill("0.09")
    form.get_by_role("button", name="Save policy").click()
    expect(s.page.locator(".toast-ok")).to_contain_text("Policy policy-page saved")
    stored = api.get("/policies/policy-page").json()
    assert stored["kl_budget"] == 0.09
    assert {k: stored[k] for k in ("min_compression", "drift_threshold", "interval_s", "auto_deploy")} == \
        {k: default[k] for k in ("min_compression", "drift_threshold", "interval_s", "auto_deploy")}
    mine = s.testid("policies-table").locator('tr[data-key="policy-page"]')
    expect(mine.locator('[data-col="kl_budget"]')).to_have_text("0.090")
    expect(s.testid("policy-delete-policy-page")).to_have_count(0)  # deleting is an admin's

    # A value the API refuses (the form's own checks bypassed): a clear error, the stored policy kept.
    s.testid("policy-edit-policy-page").click()
    form = _policy_form(s)
    form.evaluate("f => f.querySelector('form').noValidate = true")
    form.locator('input[name="drift_threshold"]').fill("5")
    form.get_by_role("button", name="Save policy").click()
    expect(s.page.locator(".toast-error")).to_contain_text("drift_threshold")
    assert api.get("/policies/policy-page").json() == stored
    # The browser logs the refused request itself; nothing else went wrong.
    assert [e for e in s.console.unexpected() if not ("422" in e and "/policies/policy-page" in e)] == []


def test_admin_deletes_a_cohort_policy(open_session, fleet: LiveServer) -> None:
    api = fleet.api("operator")
    values = {k: v for k, v in api.get("/policies/default").json().items() if k not in ("name", "updated_at")}
    assert api.put("/policies/policy-gone", json={**values, "kl_budget": 0.06}).status_code == 200
    s = open_session("admin")
    s.goto("policies")
    s.testid("policy-delete-policy-gone").click()
    _policy_form(s).get_by_role("button", name="Delete policy").click()
    expect(s.testid("policies-table").locator('tr[data-key="policy-gone"]')).to_have_count(0)
    assert api.get("/policies/policy-gone").status_code == 404
