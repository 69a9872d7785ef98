from dataclasses import replace

import numpy as np
import pytest
import torch

from workers import importance, masks, search
from workers.policy import Policy
from workers.recovery import recover
from workers.retrain import Pruner
from workers.training import Checkpoint


def _checkpoint(net, spec) -> Checkpoint:
    return Checkpoint(spec=spec, state=net.state_dict(), config={}, metrics={}, base_version="t", seconds=0.0)


def test_kl_is_near_monotone_in_the_pruning_amount(tiny_cnn):
    net, spec, calib = tiny_cnn
    policy = Policy(criteria=("energy",))
    judge = search.Judge(spec, calib, policy)
    build = search.builder(net, spec, importance.score("energy", net, spec, calib), policy, judge)
    amounts = np.linspace(0.1, 0.9, 9)
    kls = [build(float(a)).kl for a in amounts]
    assert kls[-1] > 5 * kls[0]
    for i in range(1, len(kls)):  # small dips are allowed, no reversal of the trend
        assert kls[i] >= 0.7 * max(kls[:i]), kls


def test_kl_budget_search_keeps_the_most_pruning_within_the_budget(tiny_cnn):
    net, spec, calib = tiny_cnn
    policy = Policy(criteria=("energy", "magnitude"), kl_budget=0.002, min_compression=1.0, compute="fp32")
    chosen, found = Pruner(_checkpoint(net, spec), calib).search(policy)
    assert {c.criterion for c in found} == {"energy", "magnitude"}  # the portfolio reports everyone
    assert chosen.meets_policy and chosen.kl <= 0.002
    feasible = [c for c in found if c.meets_policy]
    assert chosen.compression_ratio >= max(c.compression_ratio for c in feasible) * 0.97  # re-fit on all moves it a little
    assert any(c.kl > 0.002 for c in found)  # the bisection did probe beyond the budget
    for criterion in ("energy", "magnitude"):  # bisection, not a grid
        assert len([c for c in found if c.criterion == criterion]) <= 2 * policy.search_steps - 1


def _plain_bisection(build, policy):
    lo, hi, seen = 0.0, policy.max_amount, []
    for _ in range(policy.search_steps):
        mid = (lo + hi) / 2
        seen.append(build(mid))
        lo, hi = (mid, hi) if seen[-1].kl <= policy.kl_budget else (lo, mid)
    return seen


@pytest.mark.parametrize("budget", [0.3, 0.25, 0.2, 0.05])
def test_the_budget_search_chooses_what_plain_bisection_chooses_building_its_first_midpoint_only_if_needed(budget):
    policy = Policy(kl_budget=budget, min_compression=1.5, search_steps=6)
    built = []

    def build(amount):  # KL and compression both grow with the amount
        built.append(amount)
        c = search.Candidate("qsae", amount, "lsq", None, amount ** 2, 100, 1 / (1 - amount), 0, 0)
        c.meets_policy = c.kl <= budget and c.compression_ratio >= policy.min_compression
        return c

    found = search.bisect(build, policy)
    plain = _plain_bisection(build, policy)
    assert built[:len(found)] == [c.amount for c in found]  # what it reports is what it built
    chosen, expected = search.best(found, policy), search.best(plain, policy)
    assert (chosen and chosen.amount) == (expected and expected.amount)
    first = policy.max_amount / 2
    if any(c.meets_policy and c.amount > first for c in plain):
        assert first not in [c.amount for c in found] and len(found) == policy.search_steps - 1
    else:  # nothing above the midpoint meets the policy: the midpoint, then below it if it fails
        assert first in [c.amount for c in found]


def test_target_compression_reaches_the_ratio_with_one_full_candidate(tiny_cnn):
    net, spec, calib = tiny_cnn
    policy = Policy(mode="target_compression", target_compression=3.0, criteria=("wanda",),
                    min_compression=1.0)
    chosen, found = Pruner(_checkpoint(net, spec), calib).search(policy)
    assert chosen.compression_ratio >= 3.0
    assert len(found) <= 4  # the size is bisected cheaply; recovery runs once (or a few nudges)
    looser = Pruner(_checkpoint(net, spec), calib).search(replace(policy, target_compression=2.0))[0]
    assert looser.kl <= chosen.kl


def test_a_candidates_agreement_is_that_of_each_folds_refit_on_the_part_it_left_out(tiny_cnn):
    net, spec, calib = tiny_cnn
    # Dense top classes that vary from sample to sample (the tiny random net's barely do), so that
    # the agreement is a share to check, not 1.
    calib = replace(calib, logits=torch.randn(calib.logits.shape, generator=torch.Generator().manual_seed(0)))
    policy = Policy(criteria=("energy",))
    judge = search.Judge(spec, calib, policy)
    scores = importance.score("energy", net, spec, calib)
    c = search.builder(net, spec, scores, policy, judge)(0.8)
    held_out = 0.0
    for fit, held in judge.folds:  # each fold's re-fit, judged on the part it left out
        pruned = masks.shrink(net, masks.build(spec, scores, 0.8, policy.schedule), spec)
        recover(pruned, net, spec, fit, policy.recovery)
        head = pruned.net[spec["stem_end"]:]
        with torch.no_grad():
            held_out += float((head(held.stem_out).argmax(1) == held.logits.argmax(1)).sum())
    assert 0 < c.agreement < 1
    assert c.agreement == pytest.approx(held_out / calib.size)
