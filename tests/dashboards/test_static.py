"""What the package serves and ships, without a browser: the mount, its headers, the vendored
library, and the Grafana dashboard's queries against the series /metrics really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

import dashboards
from tests.dashboards.fleet_server import LiveServer

GRAFANA = Path(dashboards.__file__).parent / "grafana" / "qsae-fleet.json"


def test_mount_serves_the_shell_and_redirects_the_bare_path() -> None:
    app = FastAPI()
    dashboards.mount(app)
    with TestClient(app) as c:
        r = c.get("/dashboard", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/dashboard/"
        shell = c.get("/dashboard/")
        assert shell.status_code == 200 and "<title>QSAE Fleet</title>" in shell.text
        assert "default-src 'self'" in shell.headers["content-security-policy"]
        assert shell.headers["cache-control"] == "no-cache"
        lib = c.get("/dashboard/vendor/uplot/uPlot.iife.min.js")
        assert lib.status_code == 200 and lib.headers["content-type"].startswith("text/javascript")
        assert "max-age" in lib.headers["cache-control"]
        assert c.get("/dashboard/js/app.js").status_code == 200


def test_the_page_references_no_other_origin() -> None:
    """No CDN: every script, stylesheet and import is a relative path inside dashboards/web."""
    web = dashboards.WEB_DIR
    refs = re.findall(r'(?:src|href)="([^"#]+)"', (web / "index.html").read_text())
    for js in (web / "js").rglob("*.js"):
        refs += re.findall(r'^import .* from "([^"]+)";$', js.read_text(), flags=re.M)
    assert refs, "no references found: the check itself is broken"
    for ref in refs:
        assert "://" not in ref and not ref.startswith("//"), ref
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', (web / "index.html").read_text()):
        assert (web / ref).is_file(), f"index.html references a missing file: {ref}"
    assert (web / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")


def test_grafana_dashboard_queries_only_series_the_control_plane_exports(fleet: LiveServer) -> None:
    dash = json.loads(GRAFANA.read_text())
    assert dash["uid"] == "qsae-fleet" and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bqsae_[a-z_]+", e)}
    assert len(used) >= 8, used
    metrics = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics, flags=re.M):
        exported.add(name)
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    assert used <= exported, f"panels query series /metrics does not have: {sorted(used - exported)}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
