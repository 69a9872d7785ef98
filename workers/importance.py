"""Importance criteria behind one interface: unit scores for structured removal and weight
scores for the unstructured masks within what stays.

For a prunable layer with weights W and input units x_j (channels for conv inputs, features
for linear inputs; after a flatten a unit is a channel), each criterion gives every input unit
an importance imp_j, and every weight the score |W_ij| * imp_j:
    magnitude     imp_j = 1                      unit score: L2 norm of the producer's filter j
    energy        imp_j = E[x_j^2]               unit score: E[x_j^2]
    wanda         imp_j = ||X_j||_2 (per column) unit score: sum_i |W_ij| ||X_j|| over its columns
    qsae          imp_j = ||QSAE encoder col j|| unit score: the same column norm
    qsae-noquant  as qsae, without the int8 fake quantization (ablation)
Higher means more important. Activation statistics come from the dense calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from workers import nets
from workers.calibration import Calibration
from workers.errors import PolicyError
from workers.qsae import QSAEConfig, train_qsae, unit_rows
from workers.structure import Group, groups, prunable_layers

CRITERIA = ("qsae", "qsae-noquant", "energy", "wanda", "magnitude")


@dataclass
class Scores:
    criterion: str
    units: dict[int, np.ndarray]  # producer layer index -> (units,) importance
    inputs: dict[int, np.ndarray]  # layer index -> (in_units,) importance of its input units
    weights: dict[int, np.ndarray]  # layer index -> |W| * imp, weight-shaped
    magnitudes: dict[int, np.ndarray]  # layer index -> |W|, weight-shaped (for rank matching)


def _unit_view(act: torch.Tensor, group: Group | None) -> torch.Tensor:
    """A layer's input as per-unit activations: (N, C, H, W) or (N, C)."""
    if group is not None and group.spatial is not None and group.cols_per_unit > 1 and act.dim() == 2:
        h, w = group.spatial
        return act.reshape(act.shape[0], group.units, h, w)
    return act


def _expand_to_columns(per_unit: np.ndarray, layer: nn.Module, cols_per_unit: int) -> np.ndarray:
    """(in_units,) -> broadcastable over the weight: (1, in, 1, 1) for conv, (1, in) for linear."""
    if isinstance(layer, nn.Conv2d):
        return per_unit[None, :, None, None]
    return np.repeat(per_unit, cols_per_unit)[None, :]


def score(criterion: str, net: nn.Sequential, spec: nets.Spec, calib: Calibration,
          qsae_cfg: QSAEConfig | None = None) -> Scores:
    if criterion not in CRITERIA:
        raise PolicyError(f"unknown criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    qsae_cfg = qsae_cfg or QSAEConfig()
    if criterion == "qsae-noquant":
        qsae_cfg = replace(qsae_cfg, quantize=False)
    by_consumer = {g.consumer: g for g in groups(spec)}
    inputs: dict[int, np.ndarray] = {}
    weights: dict[int, np.ndarray] = {}
    magnitudes: dict[int, np.ndarray] = {}
    col_norms: dict[int, np.ndarray] = {}
    for li in prunable_layers(spec):
        layer = nets.weighted_layer(net, li)
        group = by_consumer.get(li)
        act = _unit_view(calib.inputs[li], group)
        rows = unit_rows(act).double()  # (M, in_units)
        cpu = group.cols_per_unit if group is not None else 1
        if criterion == "magnitude":
            imp = np.ones(rows.shape[1])
        elif criterion == "energy":
            imp = rows.pow(2).mean(0).numpy()
        elif criterion == "wanda":
            flat = calib.inputs[li]
            if flat.dim() == 2:  # per input column (finer than per unit after a flatten)
                col_norms[li] = flat.double().pow(2).sum(0).sqrt().numpy()
            else:
                col_norms[li] = rows.pow(2).sum(0).sqrt().numpy()
            imp = rows.pow(2).sum(0).sqrt().numpy()
        else:
            _, imp = train_qsae(rows.float(), replace(qsae_cfg, seed=qsae_cfg.seed + li))
        inputs[li] = imp
        w = layer.weight.detach().abs().double().numpy()
        magnitudes[li] = w
        if criterion == "wanda":
            col = col_norms[li]
            weights[li] = w * (col[None, :, None, None] if w.ndim == 4 else col[None, :])
        else:
            weights[li] = w * _expand_to_columns(imp, layer, cpu)
    units: dict[int, np.ndarray] = {}
    for g in groups(spec):
        if criterion == "magnitude":
            filters = nets.weighted_layer(net, g.producer).weight.detach().double()
            units[g.producer] = filters.reshape(filters.shape[0], -1).norm(dim=1).numpy()
        elif criterion == "wanda":
            contrib = weights[g.consumer]  # (out, in, ...) |W| * ||X||
            per_col = contrib.reshape(contrib.shape[0], contrib.shape[1], -1).sum(axis=(0, 2))  # (in,)
            units[g.producer] = per_col.reshape(g.units, g.cols_per_unit).sum(1)
        else:
            units[g.producer] = inputs[g.consumer]
    return Scores(criterion, units, inputs, weights, magnitudes)
