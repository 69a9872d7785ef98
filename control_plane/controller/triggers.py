"""Why a device needs a retrain, decided from its telemetry and sketches alone.

The controller never learns where a scenario's phases change: it sees accuracy (labelled where the
device has labels, otherwise the label-free estimate), drift of the stem-activation histograms
against those the deployed version was built from, and elapsed time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qsae_shared.accuracy import significant_drop
from qsae_shared.sketch import histogram_drift


@dataclass(frozen=True)
class TriggerPolicy:
    labelled_drop_pp: float = 3.0  # retrain when labelled accuracy falls this far below the baseline
    estimated_drop_pp: float = 4.0  # the same for the label-free estimate
    drift_threshold: float = 0.02  # Jensen-Shannon divergence (base 2) of stem histograms
    interval_s: float = 24 * 3600.0  # retrain at least this often
    debounce_s: float = 30.0  # no new job sooner than this after the last one was enqueued
    min_labelled: int = 100  # labelled predictions needed before labelled accuracy counts
    min_inferences: int = 200  # inferences needed in the recent window to judge anything


@dataclass(frozen=True)
class AccuracyWindow:
    """Telemetry summed over a stretch of time."""

    inferences: int = 0
    labelled: int = 0
    correct: int = 0
    estimated_sum: float = 0.0  # sum over records of estimated_accuracy * inference_count

    @property
    def labelled_accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def estimated_accuracy(self) -> float | None:
        return self.estimated_sum / self.inferences if self.inferences else None


@dataclass(frozen=True)
class DeviceState:
    device_id: str
    now: float
    has_active_job: bool
    last_job_at: float | None  # when the last retrain job was enqueued
    deployed_at: float | None  # when the deployed version was applied (None: nothing pruned yet)
    baseline: AccuracyWindow  # telemetry right after the deployed version was applied
    recent: AccuracyWindow  # telemetry of the most recent window
    reference_hist: np.ndarray | None = None  # (C, B) histograms the deployed version was built from
    latest_hist: np.ndarray | None = None  # (C, B) histograms of the newest sketch
    has_sketches: bool = True
    last_refused: bool = False  # the device refused or rolled back the last retrain's version
    install_pending: bool = False  # the device has not installed (nor refused) its assigned version yet


@dataclass(frozen=True)
class Decision:
    reasons: list[str] = field(default_factory=list)  # empty: nothing to do
    drift: float | None = None
    blocked: str | None = None  # why a triggered retrain is not enqueued now

    @property
    def enqueue(self) -> bool:
        return bool(self.reasons) and self.blocked is None


def decide(state: DeviceState, policy: TriggerPolicy) -> Decision:
    reasons: list[str] = []
    drift = None
    if state.reference_hist is not None and state.latest_hist is not None:
        drift = histogram_drift(state.reference_hist, state.latest_hist)
        if drift > policy.drift_threshold:
            reasons.append(f"drift {_above(drift, policy.drift_threshold)} > {policy.drift_threshold:g}")
    if state.deployed_at is None:
        reasons.append("initial: no pruned model deployed yet")
    else:
        reasons += _accuracy_reasons(state, policy)
        if state.now - state.deployed_at > policy.interval_s:
            reasons.append(f"interval: deployed {state.now - state.deployed_at:.0f} s ago")
    blocked = None
    if reasons:
        if state.last_refused and not any(r.startswith(("drift", "interval")) for r in reasons):
            blocked = "the device refused the last version; waiting for drift or the interval"
        elif state.has_active_job:
            blocked = "a retrain for this device is already queued or running"
        elif state.install_pending:
            blocked = "the device has not installed its assigned version yet"
        elif state.last_job_at is not None and state.now - state.last_job_at < policy.debounce_s:
            blocked = f"debounced: last job {state.now - state.last_job_at:.0f} s ago"
        elif not state.has_sketches:
            blocked = "no sketches uploaded yet"
    return Decision(reasons, drift, blocked)


def _above(value: float, threshold: float) -> str:
    """`value` with the fewest significant digits (3 at least) that still read above `threshold`:
    a drift of 0.0063 against 0.006 reads 0.0063, not 0.006 > 0.006."""
    for digits in range(3, 10):
        shown = f"{value:.{digits}g}"
        if float(shown) > threshold:
            return shown
    return repr(value)


def _accuracy_reasons(state: DeviceState, policy: TriggerPolicy) -> list[str]:
    """Drops beyond the windows' noise only: a 256-inference window alone crosses 3 pp often."""
    reasons: list[str] = []
    base, recent = state.baseline, state.recent
    if recent.inferences < policy.min_inferences or base.inferences < policy.min_inferences:
        return reasons
    if min(base.labelled, recent.labelled) >= policy.min_labelled:
        b, r = base.labelled_accuracy, recent.labelled_accuracy
        assert b is not None and r is not None
        if significant_drop(b, base.labelled, r, recent.labelled, policy.labelled_drop_pp / 100):
            reasons.append(f"labelled accuracy {r:.1%} < baseline {b:.1%} - {policy.labelled_drop_pp:g} pp")
    b_est, r_est = base.estimated_accuracy, recent.estimated_accuracy
    if b_est is not None and r_est is not None and \
            significant_drop(b_est, base.inferences, r_est, recent.inferences, policy.estimated_drop_pp / 100):
        reasons.append(f"estimated accuracy {r_est:.1%} < baseline {b_est:.1%} - "
                       f"{policy.estimated_drop_pp:g} pp")
    return reasons


def idempotency_key(device_id: str, newest_sketch_seq: int | None, base_version: str) -> str:
    """One retrain per (device, sketch window, base version): a job that runs twice makes one version."""
    return f"retrain:{device_id}:{newest_sketch_seq}:{base_version}"
