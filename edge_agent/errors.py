"""Domain errors of the edge agent."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error raised by `edge_agent`."""


class ConfigError(AgentError, ValueError):
    """The agent's configuration (file or environment) is invalid."""


class NotEnrolledError(AgentError):
    """The agent has no credentials yet: run `qsae-agent enroll` first."""


class NoModelError(AgentError):
    """No model is installed yet, so the agent cannot serve inference."""


class RetryableError(AgentError):
    """A request failed in a way worth retrying later (transport error, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the server asked us to wait (429/503), if any


class RejectedError(AgentError):
    """The server refused a request for good (4xx other than 429): retrying it will not help."""

    def __init__(self, message: str, status_code: int, reason: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.reason = reason  # the server's `detail`, or what the agent could make of the body


class InstallError(AgentError):
    """A model version was refused on the device (download, verification, or shadow evaluation);
    the currently deployed model keeps serving."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final  # True when trying the same manifest again cannot succeed
