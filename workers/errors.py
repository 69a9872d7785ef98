"""Domain errors of the pruning core."""

from __future__ import annotations


class WorkersError(Exception):
    """Base class of every error raised by `workers`."""


class ArchitectureError(WorkersError, ValueError):
    """A network description is not a supported sequential Linear/Conv2d network."""


class CheckpointError(WorkersError):
    """A checkpoint is missing, unreadable or describes a different network."""


class CalibrationError(WorkersError, ValueError):
    """The calibration data (merged sketches) cannot be used for this base model."""


class MaskError(WorkersError, ValueError):
    """A pruning mask does not fit the network it is applied to (bad indices or shapes)."""


class PolicyError(WorkersError, ValueError):
    """A pruning policy is invalid or cannot be met by any candidate."""


class ExportError(WorkersError):
    """The pruned network could not be exported or does not match its torch simulation."""
