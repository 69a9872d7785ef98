"""The label-free accuracy profile a version ships with: what the agent's estimate stands on."""

import copy

import numpy as np
import torch

from edge_agent.estimator import ConfidenceEstimator
from qsae_shared.data import load_split, preprocess
from tests.tiny_model import tiny_checkpoint
from workers import calibration, nets, profile

FOOTWEAR = [5, 7, 9]


def _footwear_only(head: torch.nn.Sequential) -> torch.nn.Sequential:
    """A version built for a shoe shop: it never answers anything but footwear."""
    out = copy.deepcopy(head)
    with torch.no_grad():
        last = [m for m in out if isinstance(m, torch.nn.Linear)][-1]
        others = [c for c in range(10) if c not in FOOTWEAR]
        last.bias[others] = -1e4
    return out


def test_a_device_version_estimates_its_accuracy_on_the_device_data_without_labels():
    ck = tiny_checkpoint()
    net, spec = ck.network(), ck.spec
    head = _footwear_only(nets.head(net, spec))
    prof = profile.base_profile(ck)
    test = load_split("test")
    shoes = np.isin(test.labels, FOOTWEAR)
    x = preprocess(test.images[shoes][:1500].astype(np.float32) / 255)
    y = test.labels[shoes][:1500]
    train = load_split("train")
    calib = preprocess(train.images[np.isin(train.labels, FOOTWEAR)][:512].astype(np.float32) / 255)
    calib_stem = torch.from_numpy(calibration.stem_outputs(net, spec, calib))
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(calibration.stem_outputs(net, spec, x))), 1).numpy()
    true = float((probs.argmax(1) == y).mean())

    with torch.no_grad():
        base_logits = nets.head(net, spec)(calib_stem)
    device = ConfidenceEstimator(profile.confidence_profile(head, prof, calib_stem, reference_logits=base_logits))
    validation_only = ConfidenceEstimator(profile.confidence_profile(head, prof, calib_stem))

    assert abs(device.estimate(probs.max(1)) - true) < 0.04
    # judged on every class, the same version looks far worse than it is on footwear
    assert true - validation_only.estimate(probs.max(1)) > 0.15
