"""The calibration set, rebuilt from a device's sketches alone.

A sketch carries whole stem outputs (int8, per-channel scales). The stem is the same in the dense
network and in every pruned one, so the dense activations at every later layer and the dense
logits follow from the stem outputs: no labels and no raw inputs leave the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from qsae_shared.sketch import Sketch, merge_sketches
from workers import nets
from workers.errors import CalibrationError

DEFAULT_CALIBRATION_SIZE = 512


@dataclass
class Calibration:
    stem_out: torch.Tensor  # (N, C, H, W) dense stem outputs
    logits: torch.Tensor  # (N, K) dense logits
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer index -> dense input of that weighted layer
    # layer index -> dense output (pre-activation) of that weighted layer: the re-fit's targets,
    # the same for every candidate the search builds
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    source: str = ""  # where it came from, for logs and reports
    # the re-fit's systems of layers whose inputs do not depend on the candidate (recovery.least_squares)
    systems: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(self.stem_out.shape[0])

    def subset(self, idx: torch.Tensor, source: str) -> Calibration:
        return Calibration(self.stem_out[idx], self.logits[idx], {k: v[idx] for k, v in self.inputs.items()},
                           {k: v[idx] for k, v in self.outputs.items()}, source)

    def folds(self, k: int, seed: int = 0) -> list[tuple[Calibration, Calibration]]:
        """k (fit, judge) pairs whose judge parts cover every sample once (k-fold). A re-fit on
        512 samples reproduces them almost exactly, so KL is judged on samples it never saw."""
        if k < 2 or self.size < k:
            return [(self, self)]
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))
        out = []
        for f in range(k):
            judge = order[f::k]
            fit = torch.cat([order[g::k] for g in range(k) if g != f])
            out.append((self.subset(fit, f"{self.source} (fit {f + 1}/{k})"),
                        self.subset(judge, f"{self.source} (judge {f + 1}/{k})")))
        return out


@torch.no_grad()
def from_stem_outputs(net: nn.Sequential, spec: nets.Spec, stem_out: np.ndarray | torch.Tensor,
                      source: str = "") -> Calibration:
    """Recompute the dense network's activations after the stem and its logits."""
    x = torch.as_tensor(np.asarray(stem_out, dtype=np.float32))  # (N, C, H, W) or (N, D)
    expected = tuple(nets.shape_trace(spec)[spec["stem_end"] - 1])
    if tuple(x.shape[1:]) != expected:
        raise CalibrationError(f"stem outputs of shape {tuple(x.shape[1:])} do not fit base model "
                               f"{spec.get('name')} (its stem emits {expected})")
    if len(x) == 0:
        raise CalibrationError("the calibration set is empty: no sketch carried any sample")
    if not torch.isfinite(x).all():
        raise CalibrationError("stem outputs hold NaN or Inf")
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    h = x
    for i in range(spec["stem_end"], len(spec["layers"])):
        weighted = spec["layers"][i]["type"] in nets.WEIGHTED
        if weighted:
            inputs[i] = h
        h = net[i](h)
        if weighted:
            outputs[i] = h
    return Calibration(stem_out=x, logits=h, inputs=inputs, outputs=outputs, source=source)


def from_sketches(net: nn.Sequential, spec: nets.Spec, sketches: list[Sketch],
                  max_samples: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0) -> Calibration:
    """Merge a device's sketches (weighted reservoir merge) and rebuild the calibration set."""
    if not sketches:
        raise CalibrationError("no sketches to calibrate from")
    try:
        merged = merge_sketches(sketches, max_samples=max_samples, seed=seed)
    except ValueError as exc:
        raise CalibrationError(f"cannot merge the sketches: {exc}") from exc
    devices = sorted({s.device_id for s in sketches})
    return from_stem_outputs(net, spec, merged.samples_float(),
                             source=f"{len(sketches)} sketches of {', '.join(devices)}")


@torch.no_grad()
def stem_outputs(net: nn.Sequential, spec: nets.Spec, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """(N, C, H, W) network input -> (N, ...) stem outputs."""
    stem = net[: spec["stem_end"]]
    return np.concatenate([stem(torch.from_numpy(x[i:i + batch])).numpy()
                           for i in range(0, len(x), batch)])


def histogram_edges(stem_out: np.ndarray, bins: int = 16) -> np.ndarray:
    """(N, C, H, W) stem outputs -> (C, bins + 1) increasing per-channel bin edges: 0, then
    quantiles of the positive activations (ReLU outputs are mostly exact zeros)."""
    c = stem_out.shape[1]
    flat = np.moveaxis(stem_out, 1, 0).reshape(c, -1)  # (C, N*H*W)
    edges = np.zeros((c, bins + 1), np.float32)
    for ch in range(c):
        pos = flat[ch][flat[ch] > 0]
        top = float(pos.max()) if len(pos) else 1.0
        qs = np.quantile(pos, np.linspace(0, 1, bins)[1:]) if len(pos) else np.linspace(0, 1, bins)[1:]
        row = np.concatenate([[0.0, 1e-6], qs[:-1], [top]])
        for i in range(1, len(row)):  # strictly increasing
            row[i] = max(row[i], row[i - 1] + 1e-6 * max(top, 1.0))
        edges[ch] = row
    return edges
