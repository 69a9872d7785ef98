"""Domain errors of the control plane. The API maps each class to one HTTP status in one handler
(`control_plane.api.errors`); the message is the `detail` a person reads, so it says what to do."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base class of every control-plane error."""

    status_code = 500

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers of the error response."""
        return {}


class AuthenticationError(ControlPlaneError):
    """No credentials, unknown credentials, or revoked credentials."""

    status_code = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PermissionDeniedError(ControlPlaneError):
    """Valid credentials that may not do this (another device's resource, too low a role)."""

    status_code = 403


class NotFoundError(ControlPlaneError):
    """The named device, job, version, rollout, policy or artifact does not exist."""

    status_code = 404


class ConflictError(ControlPlaneError):
    """The request contradicts the current state (duplicate name, token already used, ...)."""

    status_code = 409


class PayloadTooLargeError(ControlPlaneError):
    """A body over the configured cap."""

    status_code = 413


class ValidationFailedError(ControlPlaneError):
    """A body that parses but does not make sense (malformed sketch, bad manifest, ...)."""

    status_code = 422


class RateLimitedError(ControlPlaneError):
    """Too many requests from one device; retry after `retry_after` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UnavailableError(ControlPlaneError):
    """A dependency (database, Redis) is not reachable right now."""

    status_code = 503
