"""HTTP layer: routes, dependencies, error handlers."""

API_PREFIX = "/api/v1"
