"""Rollout stages as a small state machine over plain data.

A rollout takes a version to a cohort: first to a canary share of its devices; when enough canaries
have applied it without regressing, to everyone; when too many regress (or are rolled back by their
agent), it aborts and every device that got it goes back to its previous version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    CANARY = "canary"
    FULL = "full"
    DONE = "done"
    PAUSED = "paused"
    ABORTED = "aborted"


@dataclass(frozen=True)
class RolloutThresholds:
    canary_share: float = 0.2  # share of the cohort that gets the version first
    success_min: int = 1  # healthy canaries needed to advance
    max_failures: int = 1  # regressed or rolled-back devices that abort the rollout


@dataclass(frozen=True)
class Outcomes:
    targeted: int  # devices currently assigned the version
    healthy: int  # applied, and accuracy within the floor for the judging window
    failed: int  # rejected, rolled back by the agent, or regressed


def canary_count(cohort_size: int, t: RolloutThresholds) -> int:
    return max(1, math.ceil(cohort_size * t.canary_share)) if cohort_size else 0


def next_stage(stage: Stage, outcomes: Outcomes, cohort_size: int, t: RolloutThresholds) -> Stage:
    """Where a rollout goes from `stage` given what its devices reported."""
    if stage in (Stage.DONE, Stage.ABORTED, Stage.PAUSED):
        return stage
    if outcomes.failed >= t.max_failures:
        return Stage.ABORTED
    if stage is Stage.CANARY and outcomes.healthy >= min(t.success_min, canary_count(cohort_size, t)):
        return Stage.FULL
    if stage is Stage.FULL and outcomes.healthy >= cohort_size:
        return Stage.DONE
    return stage
