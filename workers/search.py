"""The adaptive threshold: bisection over the pruning amount under a KL policy.

KL is the mean over the calibration samples of KL(softmax(dense logits) || softmax(pruned
logits)), in nats, for the pruned network *after* recovery and int8 rounding, i.e. the model that
would be shipped. argmin KL alone is trivially "prune nothing", so the search is constrained:
- kl_budget: the largest amount whose KL stays within the budget;
- target_compression: the smallest amount whose artifact reaches the ratio (least KL, since KL
  grows with the amount).
KL and compression are near-monotone in the amount, so each criterion costs `steps` evaluations
(bisection), not a grid. Every evaluated point is kept, and the best one under the policy wins,
which also covers small non-monotonicities.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from qsae_shared.compression import compression_ratio
from workers import export, masks, nets
from workers.calibration import Calibration
from workers.importance import Scores
from workers.masks import Pruned
from workers.policy import Policy
from workers.recovery import recover

log = logging.getLogger(__name__)


@torch.no_grad()
def kl_divergence(dense_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(dense) || softmax(pruned)), nats. Both (N, K)."""
    return float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(dense_logits, 1),
                          log_target=True, reduction="batchmean"))


@dataclass
class Candidate:
    criterion: str  # importance criterion, or "fallback:<name>"
    amount: float  # pruning amount it was built at
    recovery: str  # recovery applied ("lsq", "none", ...)
    pruned: Pruned  # the shrunk, re-fitted network (int8-exact weights)
    kl: float  # nats, on the calibration set it was judged on
    artifact_bytes: int  # bytes of the packed artifact
    compression_ratio: float  # dense fp32 bytes / artifact bytes
    params_kept: int  # weights and biases that stay
    macs: int  # multiply-adds per input
    meets_policy: bool = False  # within the policy (KL budget or target, and minimum compression)
    seconds: float = 0.0  # time to build and judge it
    notes: dict = field(default_factory=dict)  # free-form: widths, etc.

    @property
    def method(self) -> str:
        return self.criterion if self.recovery == "none" else f"{self.criterion}+{self.recovery}"

    def summary(self) -> dict:
        return {"method": self.method, "criterion": self.criterion, "amount": round(self.amount, 4),
                "recovery": self.recovery, "kl": self.kl, "artifact_bytes": self.artifact_bytes,
                "compression_ratio": self.compression_ratio, "params_kept": self.params_kept,
                "macs": self.macs, "meets_policy": self.meets_policy, "seconds": self.seconds,
                "widths": widths(self.pruned.spec)}


def widths(spec: nets.Spec) -> list[int]:
    return [layer["out"] for layer in spec["layers"] if layer["type"] in nets.WEIGHTED]


class Judge:
    """Scores a pruned network under one policy on one calibration set."""

    def __init__(self, dense_spec: nets.Spec, calib: Calibration, policy: Policy) -> None:
        self.dense_params = nets.param_count(dense_spec)
        self.stem_end = dense_spec["stem_end"]
        self.calib = calib
        self.policy = policy

    def __call__(self, pruned: Pruned, criterion: str, amount: float, recovery: str,
                 started: float) -> Candidate:
        with torch.no_grad():
            logits = pruned.net[self.stem_end:](self.calib.stem_out)  # (N, K)
        kl = kl_divergence(self.calib.logits, logits)
        size = len(export.build_artifact(pruned))
        ratio = compression_ratio(self.dense_params, size)
        c = Candidate(criterion, amount, recovery, pruned, kl, size, ratio, pruned.kept_params(),
                      nets.macs(pruned.spec), seconds=time.perf_counter() - started)
        c.meets_policy = self.meets(c)
        return c

    def meets(self, c: Candidate) -> bool:
        p = self.policy
        if c.compression_ratio < p.min_compression:
            return False
        if p.mode == "kl_budget":
            return c.kl <= p.kl_budget
        return c.compression_ratio >= p.target_compression


def builder(net: nn.Sequential, spec: nets.Spec, calib: Calibration, scores: Scores, policy: Policy,
            judge: Judge) -> Callable[[float], Candidate]:
    def build(amount: float) -> Candidate:
        t0 = time.perf_counter()
        mask = masks.build(spec, scores, amount, policy.schedule)
        pruned = masks.shrink(net, mask, spec)
        recover(pruned, net, spec, calib, policy.recovery)
        c = judge(pruned, scores.criterion, amount, policy.recovery.name, t0)
        log.debug("%s amount %.3f: kl %.4f, %.1fx", c.method, amount, c.kl, c.compression_ratio)
        return c
    return build


def bisect(build: Callable[[float], Candidate], policy: Policy) -> list[Candidate]:
    """Every candidate evaluated by the bisection, in evaluation order."""
    lo, hi = 0.0, policy.max_amount
    seen: list[Candidate] = []
    for _ in range(policy.search_steps):
        mid = (lo + hi) / 2
        c = build(mid)
        seen.append(c)
        if policy.mode == "kl_budget":
            lo, hi = (mid, hi) if c.kl <= policy.kl_budget else (lo, mid)
        else:
            lo, hi = (lo, mid) if c.compression_ratio >= policy.target_compression else (mid, hi)
    return seen


def best(candidates: list[Candidate], policy: Policy) -> Candidate | None:
    """The best candidate under the policy, or None when none meets it."""
    ok = [c for c in candidates if c.meets_policy]
    if not ok:
        return None
    if policy.mode == "kl_budget":
        return max(ok, key=lambda c: (c.compression_ratio, -c.kl))
    return min(ok, key=lambda c: (c.kl, -c.compression_ratio))


def closest(candidates: list[Candidate], policy: Policy) -> Candidate:
    """When nothing meets the policy: the candidate nearest to it (for reports)."""
    if policy.mode == "kl_budget":
        return min(candidates, key=lambda c: (c.kl, -c.compression_ratio))
    return max(candidates, key=lambda c: (c.compression_ratio, -c.kl))
