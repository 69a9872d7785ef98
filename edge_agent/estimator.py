"""Label-free accuracy estimate from the model's own confidence.

The manifest's `ConfidenceProfile` says how accurate the model was, on held-out labelled images
when the version was built, for predictions in each confidence bin. The estimate for a window of
inferences is the mean over its predictions of the profiled accuracy of their bin: it follows the
device's confidence distribution (shift towards low confidence -> lower estimate) without a label.
"""

from __future__ import annotations

import numpy as np

from qsae_shared.manifest import ConfidenceProfile


class ConfidenceEstimator:
    def __init__(self, profile: ConfidenceProfile) -> None:
        self.edges = np.asarray(profile.bin_edges, dtype=np.float64)  # (B + 1,)
        acc = np.asarray(profile.accuracy, dtype=np.float64)  # (B,)
        self.accuracy = np.clip(acc, 0.0, 1.0)

    def per_prediction(self, confidence: np.ndarray) -> np.ndarray:
        """(N,) max softmax probabilities -> (N,) expected correctness of each prediction."""
        idx = np.searchsorted(self.edges, np.asarray(confidence, dtype=np.float64), side="right") - 1
        return self.accuracy[np.clip(idx, 0, len(self.accuracy) - 1)]

    def estimate(self, confidence: np.ndarray) -> float | None:
        """Estimated accuracy of a batch of predictions (None for an empty batch)."""
        c = np.asarray(confidence)
        return float(self.per_prediction(c).mean()) if c.size else None
