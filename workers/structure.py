"""Which units of a sequential network can be removed, and which weights see them.

A *group* is the output units of one weighted layer after the stem (its output channels or
features) together with the next weighted layer that consumes them. Removing unit j deletes
row/filter j (and bias j) of the producer and the columns that read it in the consumer: one
column for Linear->Linear and Conv->Conv (input channel j), H*W consecutive columns for
Conv->flatten->Linear (NCHW flatten order). ReLU and max-pooling act per channel, so a removed
unit's output is exactly zero in the masked dense network. The last layer's outputs (the logits)
and the stem's outputs are never removed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from workers import nets
from workers.errors import ArchitectureError


@dataclass(frozen=True)
class Group:
    producer: int  # spec index of the layer whose output units these are
    consumer: int  # spec index of the next weighted layer, which reads them
    units: int  # how many units (channels or features)
    cols_per_unit: int  # consumer columns per unit: 1, or H*W after a flatten
    spatial: tuple[int, int] | None  # (H, W) of each unit's map where the consumer sees it, else None

    def consumer_columns(self, unit: int) -> range:
        return range(unit * self.cols_per_unit, (unit + 1) * self.cols_per_unit)


def groups(spec: nets.Spec) -> list[Group]:
    """The prunable groups of a spec, in network order."""
    nets.validate(spec)
    layers = spec["layers"]
    shapes = nets.shape_trace(spec)
    weighted = nets.weighted_indices(spec)
    out = []
    for p, c in itertools.pairwise(weighted):
        if p < spec["stem_end"]:
            continue
        between = [layers[i]["type"] for i in range(p + 1, c)]
        units = layers[p]["out"]
        in_shape = shapes[c - 1]  # what the consumer reads
        if "flatten" in between:
            h, w = shapes[between.index("flatten") + p][1:]
            out.append(Group(p, c, units, h * w, (h, w)))
        elif layers[c]["type"] == "conv":
            out.append(Group(p, c, units, 1, (in_shape[1], in_shape[2])))
        else:
            out.append(Group(p, c, units, 1, None))
        for kind in between:
            if kind not in ("relu", "maxpool", "flatten"):
                raise ArchitectureError(f"layer {kind!r} between {p} and {c} is not per-unit")
    return out


def prunable_layers(spec: nets.Spec) -> list[int]:
    """Weighted layers whose weights may be masked: everything after the stem."""
    return [i for i in nets.weighted_indices(spec) if i >= spec["stem_end"]]
