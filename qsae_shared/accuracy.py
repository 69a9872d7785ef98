"""When an accuracy drop is real: the tests the controller's triggers and the agent's shadow
evaluation and probation share."""

from __future__ import annotations

import math

Z_ONE_SIDED_95 = 1.645  # a drop must exceed the floor by this many standard errors


def significant_drop(before: float, n_before: int, after: float, n_after: int, floor: float) -> bool:
    """Whether accuracy fell from `before` (over `n_before` predictions) to `after` (over `n_after`)
    by more than `floor` plus 1.645 standard errors, all as fractions. The binomial bound also holds
    for a label-free estimate: a mean of per-prediction values in [0, 1]."""
    se = math.sqrt(before * (1 - before) / max(n_before, 1) + after * (1 - after) / max(n_after, 1))
    return before - after > floor + Z_ONE_SIDED_95 * se


def significant_paired_drop(lost: int, gained: int, n: int, floor: float) -> bool:
    """Two versions on the same `n` labelled inputs: `lost` of them only the old one got right,
    `gained` only the new one. Whether the new one is worse by more than `floor` plus 1.645 standard
    errors of the paired difference. Only disagreements count, so a 3 pp gap on 100 labels is
    three inputs: far from proof on its own."""
    if n <= 0:
        return False
    drop = (lost - gained) / n
    var = max((lost + gained) / n - drop * drop, 0.0)  # per-input difference in {-1, 0, 1}
    return drop > floor + Z_ONE_SIDED_95 * math.sqrt(var / n)
