"""Per-window telemetry and per-version accuracy bookkeeping (no I/O here)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

LATENCY_SAMPLES = 4096  # latencies kept per window (a uniform reservoir past this)


@dataclass
class WindowSummary:
    window_start: float  # unix seconds
    window_end: float
    inference_count: int
    labelled_count: int  # feedback labels received in this window (for predictions of any age)
    labelled_correct: int
    estimated_accuracy: float | None  # label-free, from the manifest's confidence profile
    mean_confidence: float | None
    latency_p50_ms: float | None  # per predict() call
    latency_p95_ms: float | None
    deployed_version: str | None

    def to_record(self, uuid: str, seq: int, outbox_dropped: int) -> dict[str, object]:
        """The TelemetryRecord of docs/api-contract.md."""
        return {"uuid": uuid, "seq": seq, "window_start": self.window_start, "window_end": self.window_end,
                "inference_count": self.inference_count, "labelled_count": self.labelled_count,
                "labelled_correct": self.labelled_correct, "estimated_accuracy": self.estimated_accuracy,
                "mean_confidence": self.mean_confidence, "latency_p50_ms": self.latency_p50_ms,
                "latency_p95_ms": self.latency_p95_ms, "deployed_version": self.deployed_version,
                "outbox_dropped": outbox_dropped}


class TelemetryWindow:
    def __init__(self, start: float, version: str | None, seed: int = 0) -> None:
        self.start = start
        self.version = version
        self.count = 0
        self.labelled = 0
        self.correct = 0
        self.est_sum = 0.0
        self.conf_sum = 0.0
        self._lat: list[float] = []
        self._lat_seen = 0
        self._rng = np.random.default_rng(seed)

    def add_predictions(self, confidence: np.ndarray, expected_correct: np.ndarray, latency_ms: float) -> None:
        self.count += len(confidence)
        self.conf_sum += float(np.sum(confidence))
        self.est_sum += float(np.sum(expected_correct))
        self._lat_seen += 1
        if len(self._lat) < LATENCY_SAMPLES:
            self._lat.append(latency_ms)
        else:
            j = int(self._rng.integers(self._lat_seen))
            if j < LATENCY_SAMPLES:
                self._lat[j] = latency_ms

    def add_labels(self, n: int, correct: int) -> None:
        self.labelled += n
        self.correct += correct

    def summary(self, end: float) -> WindowSummary:
        lat = np.asarray(self._lat)
        return WindowSummary(
            window_start=self.start, window_end=max(end, self.start), inference_count=self.count,
            labelled_count=self.labelled, labelled_correct=self.correct,
            estimated_accuracy=self.est_sum / self.count if self.count else None,
            mean_confidence=self.conf_sum / self.count if self.count else None,
            latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
            latency_p95_ms=float(np.percentile(lat, 95)) if lat.size else None,
            deployed_version=self.version)


class VersionStats:
    """Sliding accuracy of one model version: the label-free estimate over its last `window`
    predictions, labelled accuracy over its last `window` labelled predictions."""

    def __init__(self, window: int) -> None:
        self.inferences = 0  # since the version started serving in this process
        self.labelled_total = 0
        self._est: deque[float] = deque(maxlen=window)
        self._hits: deque[bool] = deque(maxlen=window)

    def add_predictions(self, expected_correct: np.ndarray) -> None:
        self.inferences += len(expected_correct)
        self._est.extend(expected_correct.tolist())

    def add_labels(self, hits: np.ndarray) -> None:
        self.labelled_total += len(hits)
        self._hits.extend(hits.tolist())

    @property
    def estimated(self) -> float | None:
        return float(np.mean(self._est)) if self._est else None

    @property
    def labelled(self) -> tuple[float | None, int]:
        """(accuracy, number of labels it is computed from)."""
        n = len(self._hits)
        return (float(np.mean(self._hits)) if n else None), n

    def recent_labelled(self, last: int) -> tuple[float | None, int]:
        """The same over the newest `last` labels only."""
        hits = list(self._hits)[-last:]
        return (float(np.mean(hits)) if hits else None), len(hits)

    def recent_estimated(self, last: int) -> float | None:
        """The label-free estimate over the newest `last` predictions."""
        est = list(self._est)[-last:]
        return float(np.mean(est)) if est else None
