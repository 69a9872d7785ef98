"""What the controller does with an active rollout, decided from its devices' outcomes.

A rollout moves a version through increasing shares of a cohort (its stages). At each stage the
controller waits until the devices moved so far have reported: when enough are healthy and none
failed it advances (the last stage completes it); when too many failed (the agent rejected or rolled
back the version, or accuracy fell past the threshold) it aborts, and every device goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    ABORT = "abort"


@dataclass(frozen=True)
class Outcomes:
    assigned: int  # devices the rollout has moved so far
    healthy: int  # applied the version and kept accuracy within the threshold
    failed: int  # rejected it, rolled it back, or regressed past the threshold


def rollout_action(o: Outcomes, thresholds: dict[str, float]) -> Action:
    max_failures = int(thresholds.get("max_failures", 1))
    min_reporting = int(thresholds.get("min_devices_reporting", 1))
    if o.failed >= max_failures:
        return Action.ABORT
    if o.assigned and o.healthy >= min(o.assigned, max(min_reporting, 1)) and o.healthy + o.failed >= o.assigned:
        return Action.ADVANCE
    return Action.WAIT
