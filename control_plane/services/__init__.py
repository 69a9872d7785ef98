"""The data-access layer: the only code that queries or commits. Modules hold sync functions
taking a Session (the API runs them through `uow.Database.run`, one transaction per request);
`FleetStore` wraps them for the dispatcher, the controller and the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.services.store import FleetStore

__all__ = ["FleetStore"]


def __getattr__(name: str) -> Any:  # lazy: `from control_plane.services import devices` stays light
    if name == "FleetStore":
        from control_plane.services.store import FleetStore

        return FleetStore
    raise AttributeError(name)
