"""Pruning policies, and the default policy the product deploys.

The default policy was fixed before the benchmarks were run on the test split (docs/method.md):
its KL budget, criterion set, schedule and recovery were chosen on held-out *training* images
only. It does not change per scenario.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.errors import PolicyError
from workers.importance import CRITERIA
from workers.masks import Schedule
from workers.qsae import QSAEConfig
from workers.recovery import RecoveryConfig

MODES = ("kl_budget", "target_compression")


@dataclass(frozen=True)
class Policy:
    mode: str = "kl_budget"  # "kl_budget": most pruning with KL <= budget; "target_compression": least KL at the ratio
    kl_budget: float = 0.045  # nats, mean KL(dense || pruned) over held-out calibration samples
    target_compression: float = 16.0  # ratio to reach in target_compression mode
    min_compression: float = 8.0  # a result below this ratio is not deployable
    criteria: tuple[str, ...] = ("qsae",)  # the portfolio: each criterion is searched, the best kept
    schedule: Schedule = field(default_factory=Schedule)  # amount -> structured + unstructured masks
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)  # label-free re-fit
    qsae: QSAEConfig = field(default_factory=QSAEConfig)  # QSAE training
    folds: int = 2  # KL is judged by k-fold cross-fitting: re-fit on k-1 parts, KL on the part left out
    refit_all: bool = True  # after the search, re-fit the chosen mask on the whole calibration set
    search_steps: int = 6  # bisection steps over the pruning amount
    max_amount: float = 0.98  # upper end of the amount search
    compute: str = "auto"  # per-layer compute after the stem: "auto" (measure each layer), "fp32" or "int8"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PolicyError(f"policy mode must be one of {MODES}, not {self.mode!r}")
        if not self.criteria:
            raise PolicyError("a policy needs at least one criterion")
        for c in self.criteria:
            if c not in CRITERIA:
                raise PolicyError(f"unknown criterion {c!r}; known: {', '.join(CRITERIA)}")
        if self.kl_budget <= 0 or self.target_compression <= 1 or self.min_compression < 1:
            raise PolicyError("kl_budget must be > 0, target_compression > 1, min_compression >= 1")
        if self.compute not in ("fp32", "int8", "auto"):
            raise PolicyError("compute must be fp32, int8 or auto")

    def describe(self) -> dict:
        return {"mode": self.mode, "kl_budget": self.kl_budget,
                "target_compression": self.target_compression,
                "min_compression": self.min_compression, "criteria": list(self.criteria),
                "recovery": self.recovery.name, "recovery_damp": self.recovery.damp,
                "structured_share": self.schedule.structured_share,
                "align": self.schedule.align,
                "qsae_lambda": self.qsae.lam, "qsae_hidden_ratio": self.qsae.hidden_ratio,
                "compute": self.compute}


DEFAULT_POLICY = Policy()
