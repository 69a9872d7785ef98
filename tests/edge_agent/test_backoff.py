import random

from edge_agent.backoff import Backoff, parse_retry_after


def test_delays_grow_are_capped_jittered_and_reset():
    b = Backoff(base_s=1.0, cap_s=8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    for i, d in enumerate(delays):
        ceiling = min(8.0, 2.0**i)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 8.0
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jittered once capped
    b.reset()
    assert b.next_delay() <= 1.0


def test_retry_after_is_honoured():
    b = Backoff(base_s=1.0, cap_s=8.0)
    assert b.next_delay(retry_after=30) == 30


def test_parse_retry_after_seconds_and_date():
    assert parse_retry_after("12") == 12
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert abs(parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) - 60.0) < 1e-6
