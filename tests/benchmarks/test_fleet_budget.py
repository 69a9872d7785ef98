"""The rule that picks the dynamic benchmark's fleet KL budget from its validation figures."""

from __future__ import annotations

from benchmarks.fleet_budget import choose
from workers.policy import DEFAULT_POLICY


def _summary(*drops):
    return [{"kl_budget": b, "mean_compression_ratio": 40.0 + i, "mean_drop_pp": d}
            for i, (b, d) in enumerate(zip((0.045, 0.06, 0.09, 0.12), drops, strict=False))]


def test_the_largest_budget_within_the_margin_is_chosen_even_past_a_worse_one():
    assert choose(_summary(0.0, 0.6, 0.25, 0.74), margin_pp=0.5) == 0.09


def test_with_no_budget_within_the_margin_the_product_default_stays():
    assert choose(_summary(0.7, 0.8, 0.9, 1.2), margin_pp=0.5) == DEFAULT_POLICY.kl_budget
