"""The adaptive threshold: bisection over the pruning amount under a KL policy.

KL is the mean over the calibration samples of KL(softmax(dense logits) || softmax(pruned
logits)), in nats, for the pruned network *after* recovery and int8 rounding, i.e. the model that
would be shipped. A re-fit on 512 samples reproduces them almost exactly, so KL is judged by
k-fold cross-fitting: re-fit on k-1 parts, KL on the part left out, every sample judged once.
argmin KL alone is trivially "prune nothing", so the search is constrained:
- kl_budget: the largest amount whose KL stays within the budget;
- target_compression: the smallest amount whose artifact reaches the ratio (least KL, since KL
  grows with the amount).
KL and compression are near-monotone in the amount, so each criterion costs at most `steps`
evaluations (bisection), not a grid. Every evaluated point is kept, and the best one under the
policy wins, which also covers small non-monotonicities.
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
from workers.recovery import quantize_weights, recover

log = logging.getLogger(__name__)


@torch.no_grad()
def kl_divergence(dense_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(dense) || softmax(pruned)), nats. Both (N, K)."""
    return float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(dense_logits, 1),
                          log_target=True, reduction="batchmean"))


@torch.no_grad()
def top_class_agreement(dense_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Share of samples where the pruned network's top class is the dense one's. Both (N, K)."""
    return float((logits.argmax(1) == dense_logits.argmax(1)).float().mean())


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
    agreement: float = float("nan")  # share of held-out calibration samples where it picks the dense top class
    meets_policy: bool = False  # within the policy (KL budget or target, and minimum compression)
    seconds: float = 0.0  # time to build and judge it
    notes: dict = field(default_factory=dict)  # free-form: widths, etc.

    @property
    def method(self) -> str:
        return self.criterion if self.recovery == "none" else f"{self.criterion}+{self.recovery}"

    def summary(self) -> dict:
        return {"method": self.method, "criterion": self.criterion, "amount": round(self.amount, 4),
                "recovery": self.recovery, "kl": self.kl, "artifact_bytes": self.artifact_bytes,
                "compression_ratio": self.compression_ratio, "agreement": self.agreement,
                "params_kept": self.params_kept,
                "macs": self.macs, "meets_policy": self.meets_policy, "seconds": self.seconds,
                "widths": widths(self.pruned.spec)}


def widths(spec: nets.Spec) -> list[int]:
    return [layer["out"] for layer in spec["layers"] if layer["type"] in nets.WEIGHTED]


class ShippedSize:
    """Bytes of a pruned network's artifact as it will ship (`export.shipped_size`), so that a
    compression judged in the search holds for the file. The int8 layout's quantize nodes and
    activation ranges add the same few hundred bytes to every candidate of one network (give or
    take a few bytes of lzma), and its ranges take a pass over the calibration set (0.1 s here),
    so that overhead is measured exactly once and added to the cheap fp32 layout's size after,
    with a margin for lzma's jitter (4 bytes on the tests' tiny CNN), so the estimate errs large."""

    MARGIN = 96  # bytes

    def __init__(self, calib: Calibration, compute: str) -> None:
        self.calib, self.compute = calib, compute
        self.overhead: int | None = None  # int8 layout bytes - fp32 layout bytes, once measured

    def __call__(self, pruned: Pruned, method: str | None = None) -> int:
        plain = len(export.build_artifact(pruned, method=method))
        if self.compute == "fp32":
            return plain
        if self.overhead is None:
            self.overhead = export.shipped_size(pruned, self.calib, self.compute, method) - plain + self.MARGIN
        return plain + self.overhead


class Judge:
    """Scores pruned networks under one policy on one calibration set (k-fold cross-fitting)."""

    def __init__(self, dense_spec: nets.Spec, calib: Calibration, policy: Policy) -> None:
        self.dense_params = nets.param_count(dense_spec)
        self.stem_end = dense_spec["stem_end"]
        self.calib = calib
        self.folds = calib.folds(policy.folds)
        self.policy = policy
        self.size = ShippedSize(calib, policy.compute)

    def compare(self, pruned: Pruned, judge: Calibration | None = None) -> tuple[float, float]:
        """(KL, agreement): the mean KL from the dense outputs, and the share of samples where the
        pruned network's top class is the dense one's, on `judge` (default: the calibration set)."""
        judge = judge or self.calib
        with torch.no_grad():
            logits = pruned.net[self.stem_end:](judge.stem_out)  # (N, K)
        return kl_divergence(judge.logits, logits), top_class_agreement(judge.logits, logits)

    def candidate(self, pruned: Pruned, kl: float, agreement: float, criterion: str, amount: float,
                  recovery: str, started: float) -> Candidate:
        c = Candidate(criterion, amount, recovery, pruned, kl, 0, 0.0, pruned.kept_params(), nets.macs(pruned.spec),
                      agreement=agreement)
        c.artifact_bytes = self.size(pruned, c.method)
        c.compression_ratio = compression_ratio(self.dense_params, c.artifact_bytes)
        c.meets_policy = self.meets(c)
        c.seconds = time.perf_counter() - started
        return c

    def __call__(self, pruned: Pruned, criterion: str, amount: float, recovery: str,
                 started: float) -> Candidate:
        """A finished network (a fallback): judged on the whole calibration set."""
        return self.candidate(pruned, *self.compare(pruned), criterion, amount, recovery, started)

    def meets(self, c: Candidate) -> bool:
        p = self.policy
        if c.compression_ratio < p.min_compression:
            return False
        if p.mode == "kl_budget":
            return c.kl <= p.kl_budget
        return c.compression_ratio >= p.target_compression


def builder(net: nn.Sequential, spec: nets.Spec, scores: Scores, policy: Policy,
            judge: Judge) -> Callable[[float], Candidate]:
    """amount -> candidate: the mask, re-fitted per fold on the fit part and judged on the part
    left out (mean KL over every calibration sample); the first fold's network stands for it."""
    def build(amount: float) -> Candidate:
        t0 = time.perf_counter()
        mask = masks.build(spec, scores, amount, policy.schedule)
        total, agreed, first = 0.0, 0.0, None
        for fit, held in judge.folds:
            pruned = masks.shrink(net, mask, spec)
            recover(pruned, net, spec, fit, policy.recovery)
            kl, agreement = judge.compare(pruned, held)
            total, agreed = total + kl * held.size, agreed + agreement * held.size
            first = first or pruned
        assert first is not None
        n = sum(held.size for _, held in judge.folds)
        c = judge.candidate(first, total / n, agreed / n, scores.criterion, amount, policy.recovery.name, t0)
        log.debug("%s amount %.3f: kl %.4f, %.1fx", c.method, amount, c.kl, c.compression_ratio)
        return c
    return build


def sizer(net: nn.Sequential, spec: nets.Spec, scores: Scores, policy: Policy,
          shipped: ShippedSize) -> Callable[[float], float]:
    """Compression ratio at an amount without recovery (the mask sets the size; a re-fit only
    changes the int8 values a little)."""
    dense_params = nets.param_count(spec)

    def size(amount: float) -> float:
        pruned = masks.shrink(net, masks.build(spec, scores, amount, policy.schedule), spec)
        quantize_weights(pruned, spec["stem_end"])
        return compression_ratio(dense_params, shipped(pruned))
    return size


def bisect(build: Callable[[float], Candidate], policy: Policy,
           size: Callable[[float], float] | None = None) -> list[Candidate]:
    """Every candidate the search built, in order.

    kl_budget: bisection on the amount, each step a full candidate (mask, recovery, KL), its first
    step deferred (`_budget_bisection`).
    target_compression: bisection on the cheap size alone (2 more steps), then one full
    candidate at the smallest amount found to reach the ratio, nudged up if the re-fit's int8
    values pack a little larger."""
    if policy.mode == "kl_budget":
        return _budget_bisection(build, policy)
    lo, hi = 0.0, policy.max_amount
    seen: list[Candidate] = []
    if policy.mode == "target_compression" and size is not None:
        for _ in range(policy.search_steps + 2):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if size(mid) >= policy.target_compression else (mid, hi)
        amount, step = hi, max(hi - lo, 0.005)
        for _ in range(4):
            c = build(amount)
            seen.append(c)
            if c.compression_ratio >= policy.target_compression or amount >= policy.max_amount:
                break
            amount = min(policy.max_amount, amount + step)
            step *= 2
        return seen
    for _ in range(policy.search_steps):
        mid = (lo + hi) / 2
        c = build(mid)
        seen.append(c)
        lo, hi = (lo, mid) if c.compression_ratio >= policy.target_compression else (mid, hi)
    return seen


def _budget_bisection(build: Callable[[float], Candidate], policy: Policy) -> list[Candidate]:
    """Bisection under the KL budget, building its first midpoint only when it matters.

    The first midpoint removes about half of the weights. It is the costliest candidate of the
    search (the largest re-fit, a fifth of a retrain) and, under any useful budget, far within it
    (0.001 to 0.020 nats against 0.045 on the pinned CNN). So the search first goes on above it,
    as bisection does after a pass, and builds it only if nothing above meets the policy; should it
    fail too, the search goes on below it. The choice is plain bisection's (compression never falls
    as the amount grows), with one build fewer whenever anything above the midpoint meets the policy."""
    def halve(lo: float, hi: float, steps: int) -> list[Candidate]:
        built = []
        for _ in range(steps):
            mid = (lo + hi) / 2
            c = build(mid)
            built.append(c)
            lo, hi = (mid, hi) if c.kl <= policy.kl_budget else (lo, mid)
        return built

    first = policy.max_amount / 2
    seen = halve(first, policy.max_amount, policy.search_steps - 1)
    if any(c.meets_policy for c in seen):
        return seen
    c = build(first)
    seen.append(c)
    if c.kl > policy.kl_budget:
        seen += halve(0.0, first, policy.search_steps - 1)
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
