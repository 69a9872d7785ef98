"""When an accuracy drop is real: the one test the controller's triggers and the agent's probation share."""

from __future__ import annotations

import math

Z_ONE_SIDED_95 = 1.645  # a drop must exceed the floor by this many standard errors


def significant_drop(before: float, n_before: int, after: float, n_after: int, floor: float) -> bool:
    """Whether accuracy fell from `before` (over `n_before` predictions) to `after` (over `n_after`)
    by more than `floor` plus 1.645 standard errors, all as fractions. The binomial bound also holds
    for a label-free estimate: a mean of per-prediction values in [0, 1]."""
    se = math.sqrt(before * (1 - before) / max(n_before, 1) + after * (1 - after) / max(n_after, 1))
    return before - after > floor + Z_ONE_SIDED_95 * se
