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


def test_the_class_mix_weights_undo_the_reference_models_confusion():
    # Validation: 300 images of each of 3 classes; the reference calls 20 % of class 0 "class 1".
    labels = np.repeat([0, 1, 2], 300)
    predicted = labels.copy()
    predicted[:60] = 1
    # The device sees class 0 only, so the reference predicts 80 % "0" and 20 % "1" there.
    device_pred = np.array([0] * 80 + [1] * 20)
    w = profile._class_mix_weights(labels, predicted, device_pred, 3)
    mix = np.bincount(labels, weights=w, minlength=3) / w.sum()
    np.testing.assert_allclose(mix, [1.0, 0.0, 0.0], atol=1e-9)  # the predicted mix would say 20 % class 1


def test_an_unpruned_version_on_a_device_with_only_tops_is_judged_on_tops():
    """The base's accuracy at a given confidence is lower on the hard tops than over every class:
    a profile that ignored the device's class mix overestimated this device by 9 pp."""
    ck = tiny_checkpoint()
    net, spec = ck.network(), ck.spec
    base = nets.head(net, spec)
    tops = [0, 2, 4, 6]
    test, train = load_split("test"), load_split("train")
    m = np.isin(test.labels, tops)
    x, y = preprocess(test.images[m][:1500].astype(np.float32) / 255), test.labels[m][:1500]
    calib = preprocess(train.images[np.isin(train.labels, tops)][:512].astype(np.float32) / 255)
    calib_stem = torch.from_numpy(calibration.stem_outputs(net, spec, calib))
    with torch.no_grad():
        probs = torch.softmax(base(torch.from_numpy(calibration.stem_outputs(net, spec, x))), 1).numpy()
        reference = base(calib_stem)
    true = float((probs.argmax(1) == y).mean())
    estimate = ConfidenceEstimator(profile.confidence_profile(base, profile.base_profile(ck), calib_stem,
                                                              reference_logits=reference)).estimate(probs.max(1))
    assert abs(estimate - true) < 0.04
