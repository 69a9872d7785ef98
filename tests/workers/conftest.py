"""Tiny networks and calibration sets: no training, no data set, a second or two each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers import calibration, nets

torch.set_num_threads(1)  # the machine's two cores are shared; tiny tensors gain nothing from threads

TINY_CNN = {
    "name": "tiny-cnn",
    "input_shape": [1, 8, 8],
    "stem_end": 3,
    "layers": [
        {"type": "conv", "in": 1, "out": 4, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "in": 4, "out": 8, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "in": 8, "out": 6, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "linear", "in": 24, "out": 16},
        {"type": "relu"},
        {"type": "linear", "in": 16, "out": 3},
    ],
}


def make_net(spec: dict, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    net = nets.build(spec).eval()
    with torch.no_grad():  # positive biases keep most ReLUs alive on random inputs
        for m in net:
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.uniform_(0.0, 0.2)
        last = net[len(net) - 1]
        last.weight.mul_(3.0 / float(last.weight.std()))  # logits of a confident classifier
    return net


def inputs(spec: dict, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *spec["input_shape"])).astype(np.float32)


@pytest.fixture
def tiny_cnn():
    spec = {**TINY_CNN, "layers": [dict(layer) for layer in TINY_CNN["layers"]]}
    net = make_net(spec)
    x = inputs(spec, 256)
    calib = calibration.from_stem_outputs(net, spec, calibration.stem_outputs(net, spec, x))
    return net, spec, calib


@pytest.fixture
def tiny_mlp():
    spec = nets.mlp_spec([12, 10, 3], input_shape=(1, 4, 4), stem_width=8)
    net = make_net(spec, seed=1)
    x = inputs(spec, 256, seed=1)
    calib = calibration.from_stem_outputs(net, spec, calibration.stem_outputs(net, spec, x))
    return net, spec, calib
