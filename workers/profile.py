"""What every manifest of a base model shares, and the label-free accuracy reference.

- Histogram bin edges of the stem's output (fixed per base model, so sketches of every version
  merge and drift is measured over the same bins).
- The confidence profile of a version: its accuracy per output-confidence bin on labelled
  held-out *training* images (the last `TrainConfig.validation_images`, never trained on; half
  clean, half through the augmentation's corruption family), which the agent uses to turn the
  confidence histogram of unlabelled traffic into an accuracy estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qsae_shared.data import load_split, preprocess
from qsae_shared.manifest import ConfidenceProfile
from qsae_shared.sketch import CONFIDENCE_BINS
from workers import calibration, nets
from workers.augment import AugmentConfig, augment
from workers.training import Checkpoint

HIST_BINS = 16
EDGE_IMAGES = 4000
CONFIDENCE_IMAGES = 2000  # validation images behind each version's confidence profile


@dataclass(frozen=True)
class BaseProfile:
    hist_edges: np.ndarray  # (C, HIST_BINS + 1)
    val_stem: torch.Tensor  # (V, C, H, W) stem outputs of the held-out validation images
    val_labels: np.ndarray  # (V,)


_CACHE: dict[str, BaseProfile] = {}


def base_profile(ck: Checkpoint) -> BaseProfile:
    """Cached per base version."""
    if ck.base_version in _CACHE:
        return _CACHE[ck.base_version]
    net, spec = ck.network(), ck.spec
    train = load_split("train")
    n_val = int(ck.config.get("validation_images", 5000))
    rng = np.random.default_rng(7)
    idx = rng.choice(len(train) - n_val, size=min(EDGE_IMAGES, len(train) - n_val), replace=False)
    stem = calibration.stem_outputs(net, spec, preprocess(train.images[idx].astype(np.float32) / 255))
    edges = calibration.histogram_edges(stem, HIST_BINS)
    val01 = train.images[len(train) - n_val:][:CONFIDENCE_IMAGES].astype(np.float32) / 255
    half = len(val01) // 2
    mixed = np.concatenate([val01[:half], augment(val01[half:], AugmentConfig(clean_share=0.0), rng)])
    val_stem = torch.from_numpy(calibration.stem_outputs(net, spec, preprocess(mixed)))
    prof = BaseProfile(edges, val_stem, train.labels[len(train) - n_val:][:CONFIDENCE_IMAGES].copy())
    _CACHE[ck.base_version] = prof
    return prof


def confidence_profile(head: nn.Module, prof: BaseProfile, calib_stem: torch.Tensor) -> ConfidenceProfile:
    """Accuracy per confidence bin (validation), and the share per bin on the calibration set."""
    edges = np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1)
    with torch.no_grad():
        probs = torch.softmax(head(prof.val_stem), 1).numpy()  # (V, K)
        cal_probs = torch.softmax(head(calib_stem), 1).numpy()  # (N, K)
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.clip((conf * CONFIDENCE_BINS).astype(int), 0, CONFIDENCE_BINS - 1)
    correct = pred == prof.val_labels
    acc = []
    for b in range(CONFIDENCE_BINS):
        sel = bins == b
        # Too few samples: fall back to the bin's confidence (a calibrated model's accuracy).
        acc.append(float(correct[sel].mean()) if sel.sum() >= 10 else float((edges[b] + edges[b + 1]) / 2))
    cal_bins = np.clip((cal_probs.max(1) * CONFIDENCE_BINS).astype(int), 0, CONFIDENCE_BINS - 1)
    share = np.bincount(cal_bins, minlength=CONFIDENCE_BINS) / max(len(cal_bins), 1)
    return ConfidenceProfile(bin_edges=[float(e) for e in edges], accuracy=acc,
                             reference_hist=[float(s) for s in share])


def stem_shape(spec: nets.Spec) -> list[int]:
    return [int(s) for s in nets.shape_trace(spec)[spec["stem_end"] - 1]]
