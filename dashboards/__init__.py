"""The operator web UI (served by the control plane under `/dashboard`) and the Grafana dashboard.

`mount(app)` is the only entry point: the control plane's `create_app()` calls it.
"""

from dashboards.mount import DASHBOARD_PATH, WEB_DIR, mount

__all__ = ["DASHBOARD_PATH", "WEB_DIR", "mount"]
