"""Sequential target networks described by a plain-data spec, and the pinned benchmark CNN.

A spec is a JSON-able dict: `input_shape` (C, H, W), `stem_end` (how many leading layers form the
stem, which is never pruned) and `layers`, each one of
    {"type": "conv", "in": int, "out": int, "kernel": int, "padding": int}
    {"type": "linear", "in": int, "out": int}
    {"type": "relu"} | {"type": "maxpool", "kernel": int} | {"type": "flatten"}
A pruned network has the same spec with smaller widths, so every artifact, checkpoint and ONNX
export describes itself with one of these.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn

from workers.errors import ArchitectureError

Spec = dict[str, Any]

PINNED_CNN: Spec = {
    "name": "fmnist-cnn",
    "input_shape": [1, 28, 28],
    "stem_end": 3,
    "layers": [
        {"type": "conv", "in": 1, "out": 32, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "in": 32, "out": 64, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "in": 64, "out": 64, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "linear", "in": 3136, "out": 128},
        {"type": "relu"},
        {"type": "linear", "in": 128, "out": 10},
    ],
}

# A small CNN with the pinned one's layer kinds and stem: trains on a slice in seconds, for tests and
# the reliability benchmark (a retrain from sketches takes a few seconds).
TINY_CNN: Spec = {
    "name": "tiny-cnn", "input_shape": [1, 28, 28], "stem_end": 3,
    "layers": [
        {"type": "conv", "in": 1, "out": 8, "kernel": 3, "padding": 1}, {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "in": 8, "out": 16, "kernel": 3, "padding": 1}, {"type": "relu"},
        {"type": "maxpool", "kernel": 2}, {"type": "flatten"},
        {"type": "linear", "in": 784, "out": 32}, {"type": "relu"}, {"type": "linear", "in": 32, "out": 10},
    ],
}

WEIGHTED = ("conv", "linear")
ELEMENTWISE = ("relu",)


def pinned_spec() -> Spec:
    return copy.deepcopy(PINNED_CNN)


def mlp_spec(widths: list[int], input_shape: tuple[int, int, int] = (1, 4, 4), stem_width: int = 8) -> Spec:
    """A small MLP (flatten, linear stem + relu, then `widths`), for tests and examples."""
    d = int(input_shape[0] * input_shape[1] * input_shape[2])
    layers: list[dict[str, Any]] = [{"type": "flatten"}, {"type": "linear", "in": d, "out": stem_width},
                                    {"type": "relu"}]
    prev = stem_width
    for i, w in enumerate(widths):
        layers.append({"type": "linear", "in": prev, "out": w})
        if i < len(widths) - 1:
            layers.append({"type": "relu"})
        prev = w
    return {"name": "mlp", "input_shape": list(input_shape), "stem_end": 3, "layers": layers}


def shape_trace(spec: Spec) -> list[tuple[int, ...]]:
    """The output shape (without batch) after each layer; raises ArchitectureError on mismatch."""
    shape: tuple[int, ...] = tuple(spec["input_shape"])
    out = []
    for i, layer in enumerate(spec["layers"]):
        kind = layer.get("type")
        if kind == "conv":
            if len(shape) != 3 or shape[0] != layer["in"]:
                raise ArchitectureError(f"layer {i}: conv expects {layer['in']} channels, gets {shape}")
            k, p = layer["kernel"], layer.get("padding", 0)
            shape = (layer["out"], shape[1] + 2 * p - k + 1, shape[2] + 2 * p - k + 1)
        elif kind == "linear":
            if len(shape) != 1 or shape[0] != layer["in"]:
                raise ArchitectureError(f"layer {i}: linear expects {layer['in']} inputs, gets {shape}")
            shape = (layer["out"],)
        elif kind == "maxpool":
            if len(shape) != 3:
                raise ArchitectureError(f"layer {i}: maxpool needs (C, H, W), gets {shape}")
            k = layer["kernel"]
            shape = (shape[0], shape[1] // k, shape[2] // k)
        elif kind == "flatten":
            shape = (int(torch.tensor(shape).prod()),)
        elif kind == "relu":
            pass
        else:
            raise ArchitectureError(f"layer {i}: unsupported layer type {kind!r} "
                                    "(conv, linear, relu, maxpool, flatten)")
        if min(shape) <= 0:
            raise ArchitectureError(f"layer {i}: output shape {shape} is empty")
        out.append(shape)
    return out


def validate(spec: Spec) -> None:
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ArchitectureError("spec needs a non-empty `layers` list")
    stem_end = spec.get("stem_end")
    if not isinstance(stem_end, int) or not 0 < stem_end < len(layers):
        raise ArchitectureError(f"`stem_end` must be in 1..{len(layers) - 1}")
    if not any(layers[i]["type"] in WEIGHTED for i in range(stem_end)):
        raise ArchitectureError("the stem must hold at least one conv or linear layer")
    if layers[-1]["type"] != "linear":
        raise ArchitectureError("the last layer must be linear (it produces the logits)")
    shape_trace(spec)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (kernel = stride, no padding). Outside autograd it takes the elementwise maximum
    of the kernel's k x k strided views of the input: the same values, about 10x faster than torch's
    CPU pooling kernel on one thread (1.2 against 11.7 ms for 256 x 44 x 14 x 14), which the re-fit
    and the search run many times. Under autograd torch's own kernel runs, so training is unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size if isinstance(self.kernel_size, int) else 0
        plain = k >= 2 and self.stride == k and self.padding == 0 and self.dilation == 1 and not self.ceil_mode
        if not plain or x.dim() != 4 or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        n, c, h, w = x.shape
        windows = x[..., : h - h % k, : w - w % k].reshape(n, c, h // k, k, w // k, k)
        out = windows[:, :, :, 0, :, 0]
        for i in range(k):
            for j in range(k):
                if i or j:
                    out = torch.maximum(out, windows[:, :, :, i, :, j])
        return out


def build(spec: Spec) -> nn.Sequential:
    """An untrained torch network for a spec (layer i of the spec is module i)."""
    validate(spec)
    modules: list[nn.Module] = []
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind == "conv":
            modules.append(nn.Conv2d(layer["in"], layer["out"], layer["kernel"],
                                     padding=layer.get("padding", 0)))
        elif kind == "linear":
            modules.append(nn.Linear(layer["in"], layer["out"]))
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "maxpool":
            modules.append(MaxPool2d(layer["kernel"]))
        else:
            modules.append(nn.Flatten())
    return nn.Sequential(*modules)


def spec_of(net: nn.Sequential, like: Spec) -> Spec:
    """The spec of `net`, whose layer types follow `like` but whose widths may be smaller."""
    spec = copy.deepcopy(like)
    for layer, module in zip(spec["layers"], net, strict=True):
        if isinstance(module, nn.Conv2d):
            layer["in"], layer["out"] = module.in_channels, module.out_channels
        elif isinstance(module, nn.Linear):
            layer["in"], layer["out"] = module.in_features, module.out_features
    validate(spec)
    return spec


def weighted_indices(spec: Spec) -> list[int]:
    return [i for i, layer in enumerate(spec["layers"]) if layer["type"] in WEIGHTED]


def weighted_layer(net: nn.Sequential, index: int) -> nn.Conv2d | nn.Linear:
    """Module `index` of `net`, a conv or linear layer (one of `weighted_indices`)."""
    layer = net[index]
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ArchitectureError(f"module {index} is a {type(layer).__name__}, not a conv or linear layer")
    return layer


def bias(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """The bias `build` gives every conv and linear layer."""
    if layer.bias is None:
        raise ArchitectureError(f"{layer} has no bias")
    return layer.bias


def param_count(spec: Spec) -> int:
    """Weights + biases of a spec (dense)."""
    total = 0
    for layer in spec["layers"]:
        if layer["type"] == "conv":
            total += layer["out"] * (layer["in"] * layer["kernel"] ** 2 + 1)
        elif layer["type"] == "linear":
            total += layer["out"] * (layer["in"] + 1)
    return total


def macs(spec: Spec) -> int:
    """Multiply-adds per input of the dense network the spec describes."""
    shapes = shape_trace(spec)
    total = 0
    for layer, shape in zip(spec["layers"], shapes, strict=True):
        if layer["type"] == "conv":
            total += layer["in"] * layer["kernel"] ** 2 * shape[0] * shape[1] * shape[2]
        elif layer["type"] == "linear":
            total += layer["in"] * layer["out"]
    return total


def stem(net: nn.Sequential, spec: Spec) -> nn.Sequential:
    return cast(nn.Sequential, net[: spec["stem_end"]])  # torch types Sequential[slice] as Module


def head(net: nn.Sequential, spec: Spec) -> nn.Sequential:
    return cast(nn.Sequential, net[spec["stem_end"]:])
