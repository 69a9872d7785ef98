"""The operator web UI (served by the control plane) and the Grafana dashboard."""
