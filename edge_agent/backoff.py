"""Capped, jittered exponential backoff that resets after a success."""

from __future__ import annotations

import email.utils
import random
import time


class Backoff:
    def __init__(self, base_s: float = 1.0, cap_s: float = 300.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s  # delay scale of the first retry
        self.cap_s = cap_s  # no delay computed from the attempt count exceeds this
        self.rng = rng or random.Random()
        self.attempt = 0  # failures since the last success

    def next_delay(self, retry_after: float | None = None) -> float:
        """Delay before the next try: half of min(cap, base * 2^attempt) plus a uniform jitter of
        up to the other half; at least `retry_after` when the server asked for it."""
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 60))
        self.attempt += 1
        delay = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def reset(self) -> None:
        self.attempt = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` in delta-seconds or as an HTTP date -> seconds from now (None if absent/bad)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
