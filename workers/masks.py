"""Pruning masks: structured (whole units) and unstructured (single weights within what stays),
driven by one pruning amount through a documented schedule; and the shrinking that makes the
matrices really smaller.

Schedule for an amount a in [0, 1] (docs/method.md):
1. Structured: in every group, the floor(min(structured_share * a * w_g, max_structured) * units)
   units of lowest importance are removed (at least `min_units` stay; w_g = 1 unless
   `group_weighting="macs"`). Units whose importance is exactly zero (dead units) are removed at
   any amount above zero.
   Then the number of units a group keeps is rounded to the nearest multiple of `align` (default
   4; halves round up), at least `align` and at most the group's size; a group smaller than that
   keeps what step 1 gave it. Rounding down removes the least important units still kept,
   rounding up restores the most important removed ones. The rounding is monotone in the kept
   count, so the kept widths still never grow with the amount (the bisection relies on it).
   Why: ONNX Runtime's kernels work in blocks of channels (NCHWc blocks of 8 on AVX2, int8 GEMM
   panels of 4 to 16); measured on the pinned CNN, 42 kept channels ran 1.3x slower than 40, 36
   and 44 like 40. 4 rather than 8: with 8 the KL budget could only choose between 48 and 40
   channels (about 17x or 21-23x); 4 was chosen on validation images (docs/method.md, section 9).
2. Unstructured: over the weights that remain in every layer after the stem, a single global
   threshold tau masks the fraction a of them with the lowest score after the allocation's
   normalization: "relative" (default) divides each score by the sum of its output row's scores,
   so sparsity follows fan-in; "magnitude" rank-matches each layer's scores onto its |W| (global
   magnitude allocation); "uniform" gives every layer the same sparsity.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers import nets
from workers.errors import MaskError
from workers.importance import Scores
from workers.structure import Group, groups, prunable_layers


@dataclass(frozen=True)
class Schedule:
    structured_share: float = 0.5  # units removed per group = structured_share * amount * weight_g * units
    max_structured: float = 0.875  # never remove more than this share of a group's units
    min_units: int = 1  # keep at least this many units in every group
    drop_dead: bool = True  # remove units of zero importance at any positive amount
    allocation: str = "relative"  # unstructured sparsity over layers: "relative", "magnitude" or "uniform"
    group_weighting: str = "uniform"  # weight_g: "uniform" (all 1) or "macs" (sqrt of multiply-adds per unit, mean 1)
    align: int = 4  # kept units per group rounded to a multiple of this (hardware-friendly widths); 1 = off

    def __post_init__(self) -> None:
        if not isinstance(self.align, int) or self.align < 1:
            raise MaskError(f"align must be an integer >= 1, got {self.align!r}")

    def group_weights(self, spec: nets.Spec) -> list[float]:
        gs = groups(spec)
        if self.group_weighting == "uniform" or not gs:
            return [1.0] * len(gs)
        per_unit = np.sqrt([_macs_per_unit(spec, g) for g in gs])
        return list(per_unit / per_unit.mean())

    def structured_fraction(self, amount: float, weight: float = 1.0) -> float:
        return min(self.structured_share * amount * weight, self.max_structured)

    def aligned(self, kept: int, units: int) -> int:
        """How many units a group of `units` keeps when step 1 kept `kept` (monotone in kept)."""
        if self.align <= 1 or kept >= units or units <= self.align:
            return kept
        rounded = self.align * int(np.floor(kept / self.align + 0.5))
        return max(min(rounded, units), self.align, self.min_units)


def _macs_per_unit(spec: nets.Spec, g: Group) -> float:
    """Multiply-adds one unit of group g costs: its row in the producer, its columns in the consumer."""
    shapes = nets.shape_trace(spec)
    layers = spec["layers"]
    prod, cons = layers[g.producer], layers[g.consumer]
    out_hw = int(np.prod(shapes[g.producer][1:])) if prod["type"] == "conv" else 1
    cons_hw = int(np.prod(shapes[g.consumer][1:])) if cons["type"] == "conv" else 1
    k_prod = prod["in"] * (prod["kernel"] ** 2 if prod["type"] == "conv" else 1)
    k_cons = cons["out"] * (cons["kernel"] ** 2 if cons["type"] == "conv" else 1) * g.cols_per_unit
    return float(k_prod * out_hw + k_cons * cons_hw)


@dataclass
class Mask:
    """A mask in the DENSE network's coordinates."""

    keep: dict[int, np.ndarray]  # producer layer index -> (units,) bool, True = unit stays
    weights: dict[int, np.ndarray]  # layer index -> bool, dense weight shape, True = weight stays

    def check(self, spec: nets.Spec) -> None:
        """Reject masks that do not fit `spec`, with a message that says what is wrong."""
        gs = {g.producer: g for g in groups(spec)}
        for p, keep in self.keep.items():
            if p not in gs:
                raise MaskError(f"layer {p} does not produce a prunable group "
                                f"(prunable producers: {sorted(gs)})")
            if keep.dtype != bool or keep.shape != (gs[p].units,):
                raise MaskError(f"unit mask of layer {p} must be bool of shape ({gs[p].units},), "
                                f"got {keep.dtype} {keep.shape}")
            if not keep.any():
                raise MaskError(f"unit mask of layer {p} removes every unit")
        prunable = set(prunable_layers(spec))
        for li, m in self.weights.items():
            if li not in prunable:
                raise MaskError(f"layer {li} is not prunable (the stem is never pruned; "
                                f"prunable layers: {sorted(prunable)})")
            shape = _weight_shape(spec["layers"][li])
            if m.dtype != bool or m.shape != shape:
                raise MaskError(f"weight mask of layer {li} must be bool of shape {shape}, "
                                f"got {m.dtype} {m.shape}")

    def digest(self) -> str:
        h = hashlib.sha256()
        for d in (self.keep, self.weights):
            for k in sorted(d):
                h.update(str(k).encode())
                h.update(np.packbits(d[k].reshape(-1)).tobytes())
        return h.hexdigest()


def _weight_shape(layer: dict) -> tuple[int, ...]:
    if layer["type"] == "conv":
        return (layer["out"], layer["in"], layer["kernel"], layer["kernel"])
    return (layer["out"], layer["in"])


def _align(k: np.ndarray, imp: np.ndarray, target: int) -> np.ndarray:
    """Keep exactly `target` units: drop the least important kept ones, or restore the most
    important removed ones."""
    k = k.copy()
    kept, removed = np.flatnonzero(k), np.flatnonzero(~k)
    if target < len(kept):
        k[kept[np.argsort(imp[kept], kind="stable")[: len(kept) - target]]] = False
    elif target > len(kept):
        k[removed[np.argsort(-imp[removed], kind="stable")[: target - len(kept)]]] = True
    return k


def _rows_cols(spec: nets.Spec, keep: dict[int, np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """layer index -> (kept output rows, kept input columns), dense coordinates."""
    out = {}
    by_consumer = {g.consumer: g for g in groups(spec)}
    for li in nets.weighted_indices(spec):
        layer = spec["layers"][li]
        rows = np.flatnonzero(keep[li]) if li in keep else np.arange(layer["out"])
        g: Group | None = by_consumer.get(li)
        if g is not None and g.producer in keep:
            units = np.flatnonzero(keep[g.producer])
            cols = (units[:, None] * g.cols_per_unit + np.arange(g.cols_per_unit)[None, :]).reshape(-1)
        else:
            cols = np.arange(layer["in"])
        out[li] = (rows, cols)
    return out


def build(spec: nets.Spec, scores: Scores, amount: float, schedule: Schedule) -> Mask:
    """The mask for one pruning amount (see the module docstring)."""
    if not 0.0 <= amount <= 1.0:
        raise MaskError(f"pruning amount must be in [0, 1], got {amount}")
    keep: dict[int, np.ndarray] = {}
    for g, weight in zip(groups(spec), schedule.group_weights(spec), strict=True):
        frac = schedule.structured_fraction(amount, weight)
        imp = scores.units[g.producer]
        k = np.ones(g.units, bool)
        if amount > 0 and schedule.drop_dead:
            k &= imp > 0
        n_remove = int(np.floor(frac * g.units))
        order = np.argsort(imp, kind="stable")  # least important first
        k[order[:n_remove]] = False
        if k.sum() < schedule.min_units:
            k[order[::-1][: schedule.min_units]] = True
        keep[g.producer] = _align(k, imp, schedule.aligned(int(k.sum()), g.units))
    rc = _rows_cols(spec, keep)
    # Rank-matched scores over the region that stays, then one global threshold.
    matched: dict[int, np.ndarray] = {}
    for li in prunable_layers(spec):
        rows, cols = rc[li]
        region = scores.weights[li][np.ix_(rows, cols)]
        s = region.reshape(-1)
        if schedule.allocation == "magnitude":  # the layer's own weight magnitudes
            mag = np.sort(scores.magnitudes[li][np.ix_(rows, cols)].reshape(-1))
        elif schedule.allocation == "uniform":  # every layer's scores mapped onto the same ranks
            mag = (np.arange(len(s)) + 0.5) / len(s)
        elif schedule.allocation == "relative":  # share of its row's total score
            rel = region.reshape(len(rows), -1)
            rel = rel / np.maximum(rel.sum(1, keepdims=True), 1e-30)
            mag = np.sort(rel.reshape(-1))
        else:
            raise MaskError(f"unknown allocation {schedule.allocation!r}")
        ranked = np.empty_like(mag)
        ranked[np.argsort(s, kind="stable")] = mag
        matched[li] = ranked
    allv = np.concatenate(list(matched.values()))
    n_mask = int(np.floor(amount * len(allv)))
    tau = np.partition(allv, n_mask - 1)[n_mask - 1] if n_mask > 0 else -np.inf
    weights: dict[int, np.ndarray] = {}
    for li in prunable_layers(spec):
        rows, cols = rc[li]
        shape = _weight_shape(spec["layers"][li])
        m = np.zeros(shape, bool)
        region = (matched[li] > tau).reshape((len(rows), len(cols), *shape[2:]))
        m[np.ix_(rows, cols)] = region
        weights[li] = m
    mask = Mask(keep, weights)
    mask.check(spec)
    return mask


@dataclass
class Pruned:
    """A shrunk network: smaller matrices, plus the unstructured masks of what stays."""

    spec: nets.Spec  # the shrunk spec
    net: nn.Sequential  # the shrunk network (masked weights are zero)
    masks: dict[int, torch.Tensor]  # layer index -> bool, shrunk weight shape
    keep: dict[int, np.ndarray]  # producer layer index -> kept unit indices in dense coordinates

    def enforce(self) -> None:
        """Zero every masked weight (after a re-fit or an optimizer step)."""
        with torch.no_grad():
            for li, m in self.masks.items():
                w = nets.weighted_layer(self.net, li).weight
                w.mul_(m.to(w.dtype))

    def kept_params(self) -> int:
        """Weights that stay (mask ones) plus every bias and the unmasked stem."""
        total = 0
        for li in nets.weighted_indices(self.spec):
            layer = nets.weighted_layer(self.net, li)
            w = int(self.masks[li].sum()) if li in self.masks else layer.weight.numel()
            total += w + nets.bias(layer).numel()
        return total


def apply_dense(net: nn.Sequential, mask: Mask, spec: nets.Spec) -> nn.Sequential:
    """A copy of the dense network with the mask applied by zeroing (no shrinking)."""
    mask.check(spec)
    out = copy.deepcopy(net)
    rc = _rows_cols(spec, mask.keep)
    with torch.no_grad():
        for li in nets.weighted_indices(spec):
            layer = nets.weighted_layer(out, li)
            w, b = layer.weight, nets.bias(layer)
            rows, cols = rc[li]
            keep = torch.zeros_like(w, dtype=torch.bool)
            keep[np.ix_(rows, cols)] = True
            if li in mask.weights:
                keep &= torch.from_numpy(mask.weights[li])
            w.mul_(keep)
            row_keep = torch.zeros(w.shape[0], dtype=torch.bool)
            row_keep[rows] = True
            b.mul_(row_keep)
    return out


def shrink(net: nn.Sequential, mask: Mask, spec: nets.Spec) -> Pruned:
    """Remove the masked units for real: producer rows and consumer columns disappear."""
    mask.check(spec)
    rc = _rows_cols(spec, mask.keep)
    small = copy.deepcopy(spec)
    for li in nets.weighted_indices(spec):
        rows, cols = rc[li]
        layer = small["layers"][li]
        layer["out"] = len(rows)
        layer["in"] = len(cols)
    small_net = nets.build(small)
    masks: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for li in nets.weighted_indices(spec):
            rows, cols = rc[li]
            dense, shrunk = nets.weighted_layer(net, li), nets.weighted_layer(small_net, li)
            w = dense.weight.detach()[np.ix_(rows, cols)]
            if li in mask.weights:
                m = torch.from_numpy(mask.weights[li][np.ix_(rows, cols)].copy())
                masks[li] = m
                w = w * m
            shrunk.weight.copy_(w)
            nets.bias(shrunk).copy_(nets.bias(dense).detach()[rows])
    keep = {p: np.flatnonzero(k) for p, k in mask.keep.items()}
    return Pruned(small, small_net.eval(), masks, keep)
