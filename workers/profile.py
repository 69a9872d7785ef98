"""What every manifest of a base model shares, and the label-free accuracy reference.

- Histogram bin edges of the stem's output (fixed per base model, so sketches of every version
  merge and drift is measured over the same bins).
- The confidence profile of a version: its accuracy per output-confidence bin, which the agent
  uses to turn the confidence histogram of unlabelled traffic into an accuracy estimate. For the
  base it is measured on labelled held-out *training* images (the last
  `TrainConfig.validation_images`, never trained on; half clean, half through the augmentation's
  corruption family); for a device's version, label-free on the device's calibration set (see
  `confidence_profile`).
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
    val_inputs: np.ndarray  # (V, 1, 28, 28) the same images as network inputs (preprocessed)
    val_labels: np.ndarray  # (V,)
    val_probs: np.ndarray  # (V, K) the base model's softmax outputs on them


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
    val_inputs = preprocess(mixed)
    val_stem = torch.from_numpy(calibration.stem_outputs(net, spec, val_inputs))
    with torch.no_grad():
        val_probs = torch.softmax(nets.head(net, spec)(val_stem), 1).numpy()
    prof = BaseProfile(edges, val_stem, val_inputs, train.labels[len(train) - n_val:][:CONFIDENCE_IMAGES].copy(), val_probs)
    _CACHE[ck.base_version] = prof
    return prof


MIN_BIN_SAMPLES = 10  # fewer samples than this in a bin: its accuracy is not measured there


def _bins(conf: np.ndarray) -> np.ndarray:
    """(N,) max softmax probabilities -> (N,) confidence bin indices."""
    return np.clip((conf * CONFIDENCE_BINS).astype(int), 0, CONFIDENCE_BINS - 1)


def _per_bin_accuracy(conf: np.ndarray, correct: np.ndarray, edges: np.ndarray,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """(B,) accuracy per confidence bin (the bin's mid-point where too few samples); with `weights`,
    the weighted accuracy where a bin holds weight, else the unweighted one."""
    bins = _bins(conf)
    counts = np.bincount(bins, minlength=CONFIDENCE_BINS)
    sums = np.bincount(bins, weights=correct.astype(np.float64), minlength=CONFIDENCE_BINS)
    mid = (edges[:-1] + edges[1:]) / 2  # a calibrated model's accuracy
    acc = np.where(counts >= MIN_BIN_SAMPLES, sums / np.maximum(counts, 1), mid)
    if weights is not None:
        w = np.bincount(bins, weights=weights, minlength=CONFIDENCE_BINS)
        ws = np.bincount(bins, weights=weights * correct, minlength=CONFIDENCE_BINS)
        acc = np.where((counts >= MIN_BIN_SAMPLES) & (w > 0), ws / np.maximum(w, 1e-12), acc)
    return acc


def _class_mix_weights(labels: np.ndarray, ref_val_pred: np.ndarray, ref_device_pred: np.ndarray,
                       classes: int) -> np.ndarray:
    """(V,) weight of each validation image so that the validation set takes the device's class mix,
    estimated without a label from the reference model's predictions on the device's calibration
    set. The reference confuses classes, so its predicted mix is not the true one: the true mix w
    solves P_device(predicted i) = sum_j P_validation(predicted i, class j) w_j (black-box shift
    estimation, Lipton et al. 2018), least squares, clipped at 0. A footwear shop's version is then
    judged on footwear, not on every class."""
    joint = np.zeros((classes, classes))
    np.add.at(joint, (ref_val_pred, labels), 1.0 / max(len(labels), 1))
    device = np.bincount(ref_device_pred, minlength=classes) / max(len(ref_device_pred), 1)
    w = np.clip(np.linalg.lstsq(joint, device, rcond=None)[0], 0.0, None)
    return w[labels]


def _pooled_accuracy(conf: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(B,) mean expected correctness per confidence bin; a sparse bin pools its neighbours, widening
    symmetrically until it holds MIN_BIN_SAMPLES samples."""
    bins = _bins(conf)
    counts = np.bincount(bins, minlength=CONFIDENCE_BINS)
    sums = np.bincount(bins, weights=expected, minlength=CONFIDENCE_BINS)
    out = np.empty(CONFIDENCE_BINS)
    for b in range(CONFIDENCE_BINS):
        for k in range(CONFIDENCE_BINS):
            lo, hi = max(0, b - k), min(CONFIDENCE_BINS, b + k + 1)
            if counts[lo:hi].sum() >= MIN_BIN_SAMPLES or (lo == 0 and hi == CONFIDENCE_BINS):
                break
        out[b] = sums[lo:hi].sum() / max(counts[lo:hi].sum(), 1)
    return out


def confidence_profile(head: nn.Module, prof: BaseProfile, calib_stem: torch.Tensor,
                       reference_logits: torch.Tensor | None = None,
                       val_logits: np.ndarray | None = None) -> ConfidenceProfile:
    """Accuracy per confidence bin, and the share per bin on the calibration set.

    Without `reference_logits` (the base model's logits on `calib_stem`) the accuracy per bin is measured on the labelled
    validation images. A version pruned for one device is judged on that device's data instead,
    still without a label: on each calibration sample its expected correctness is the reference's
    validated accuracy at the reference's confidence where the two agree, and the validated rate
    at which it is right against a wrong reference where they do not. (A footwear-only version is
    confidently wrong on the validation set's shirts, which says nothing about its footwear.)

    val_logits: the version's logits on `prof.val_inputs`, as ONNX Runtime computes them from the
    artifact (3.5x faster than `head` on the validation stems here, and what the device runs);
    without them `head` computes them.
    """
    edges = np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1)
    with torch.no_grad():
        val = torch.from_numpy(val_logits) if val_logits is not None else head(prof.val_stem)
        probs = torch.softmax(val, 1).numpy()  # (V, K)
        cal_probs = torch.softmax(head(calib_stem), 1).numpy()  # (N, K)
    acc = _per_bin_accuracy(probs.max(1), probs.argmax(1) == prof.val_labels, edges)
    cal_conf, cal_pred = cal_probs.max(1), cal_probs.argmax(1)
    if reference_logits is not None and len(cal_conf):
        ref_val = prof.val_probs  # (V, K)
        ref_cal = torch.softmax(reference_logits, 1).numpy()  # (N, K)
        ref_right = ref_val.argmax(1) == prof.val_labels
        weights = _class_mix_weights(prof.val_labels, ref_val.argmax(1), ref_cal.argmax(1), ref_val.shape[1])
        ref_acc = _per_bin_accuracy(ref_val.max(1), ref_right, edges, weights)
        against_wrong = (probs.argmax(1) != ref_val.argmax(1)) & ~ref_right
        w_against = weights * against_wrong
        if w_against.sum() == 0:  # the device's classes never meet a wrong reference: every class counts
            w_against = against_wrong.astype(float)
        right_against_wrong = (float((w_against * (probs.argmax(1) == prof.val_labels)).sum() / w_against.sum())
                               if w_against.sum() > 0 else 0.0)
        p_ref = ref_acc[_bins(ref_cal.max(1))]
        expected = np.where(cal_pred == ref_cal.argmax(1), p_ref, (1 - p_ref) * right_against_wrong)  # (N,)
        acc = _pooled_accuracy(cal_conf, expected)
    share = np.bincount(_bins(cal_conf), minlength=CONFIDENCE_BINS) / max(len(cal_conf), 1)
    return ConfidenceProfile(bin_edges=[float(e) for e in edges], accuracy=[float(a) for a in acc],
                             reference_hist=[float(s) for s in share])


def stem_shape(spec: nets.Spec) -> list[int]:
    return [int(s) for s in nets.shape_trace(spec)[spec["stem_end"] - 1]]
