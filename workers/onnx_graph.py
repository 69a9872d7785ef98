"""The ONNX graph of a (shrunk) sequential network, without its large weights.

Names: input `input` (N, C, H, W) float32, outputs `logits` (N, K) and `stem` (the stem's output,
which the agent's sketches summarize). Layer i reads weights `w{i}` and bias `b{i}`; the
artifact supplies them (see `qsae_shared.artifact`). A layer computes in fp32 (Conv / Gemm on
float weights dequantized at load time) or in int8 (QuantizeLinear -> QLinearConv or QGemm on
the int8 weights -> float), per `compute`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from workers import nets

INPUT, LOGITS, STEM = "input", "logits", "stem"
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class ActQuant:
    """uint8 quantization of one int8-compute layer's input (and output, for conv)."""

    x_scale: float  # input scale (inputs are post-ReLU or raw pixels)
    x_zero_point: int  # uint8 zero point of the input
    y_scale: float  # conv output scale (QLinearConv needs one)
    y_zero_point: int  # uint8 zero point of the conv output


def weight_names(i: int) -> tuple[str, str]:
    return f"w{i}", f"b{i}"


def build_graph(spec: nets.Spec, compute: dict[int, str] | None = None,
                act: dict[int, ActQuant] | None = None) -> onnx.ModelProto:
    """The model with every weight and bias left out (they come from the artifact)."""
    compute = compute or {}
    act = act or {}
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shapes = nets.shape_trace(spec)
    h = INPUT
    stem_last = spec["stem_end"] - 1
    for i, layer in enumerate(spec["layers"]):
        out = STEM if i == stem_last else (LOGITS if i == len(spec["layers"]) - 1 else f"h{i}")
        kind = layer["type"]
        w, b = weight_names(i)
        if kind in nets.WEIGHTED and compute.get(i, "fp32") == "int8":
            nodes += _int8_layer(i, layer, h, out, act[i], inits)
        elif kind == "conv":
            p = layer.get("padding", 0)
            nodes.append(helper.make_node("Conv", [h, w, b], [out], name=f"conv{i}",
                                          kernel_shape=[layer["kernel"]] * 2, pads=[p] * 4))
        elif kind == "linear":
            nodes.append(helper.make_node("Gemm", [h, w, b], [out], name=f"gemm{i}", transB=1))
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [h], [out], name=f"relu{i}"))
        elif kind == "maxpool":
            k = layer["kernel"]
            nodes.append(helper.make_node("MaxPool", [h], [out], name=f"pool{i}",
                                          kernel_shape=[k, k], strides=[k, k]))
        else:
            nodes.append(helper.make_node("Flatten", [h], [out], name=f"flatten{i}", axis=1))
        h = out
    c, hh, ww = spec["input_shape"]
    graph = helper.make_graph(
        nodes, spec.get("name", "model"),
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", c, hh, ww])],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", shapes[-1][0]]),
         helper.make_tensor_value_info(STEM, TensorProto.FLOAT, ["N", *shapes[stem_last]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="qsae-fleet")
    model.ir_version = IR_VERSION
    return model


def _int8_layer(i: int, layer: dict, h: str, out: str, q: ActQuant,
                inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    w, b = weight_names(i)
    xs, xz, ys, yz = f"x{i}_scale", f"x{i}_zp", f"y{i}_scale", f"y{i}_zp"
    inits += [numpy_helper.from_array(np.array(q.x_scale, np.float32), xs),
              numpy_helper.from_array(np.array(q.x_zero_point, np.uint8), xz)]
    nodes = [helper.make_node("QuantizeLinear", [h, xs, xz], [f"{h}_q{i}"], name=f"quant{i}")]
    if layer["type"] == "conv":
        inits += [numpy_helper.from_array(np.array(q.y_scale, np.float32), ys),
                  numpy_helper.from_array(np.array(q.y_zero_point, np.uint8), yz),
                  numpy_helper.from_array(np.array([1, 2], np.int64), f"axes{i}")]
        p = layer.get("padding", 0)
        nodes += [
            helper.make_node("QLinearConv", [f"{h}_q{i}", xs, xz, w, f"{w}_scale", f"{w}_zero_point", ys, yz],
                             [f"y{i}_q"], name=f"qconv{i}", kernel_shape=[layer["kernel"]] * 2, pads=[p] * 4),
            helper.make_node("DequantizeLinear", [f"y{i}_q", ys, yz], [f"y{i}_f"], name=f"dequant{i}"),
            helper.make_node("Unsqueeze", [b, f"axes{i}"], [f"{b}_chw"], name=f"bias_shape{i}"),
            helper.make_node("Add", [f"y{i}_f", f"{b}_chw"], [out], name=f"bias{i}"),
        ]
    else:
        nodes += [
            helper.make_node("QGemm", [f"{h}_q{i}", xs, xz, w, f"{w}_scale", f"{w}_zero_point"],
                             [f"y{i}_f"], name=f"qgemm{i}", domain="com.microsoft", transB=1),
            helper.make_node("Add", [f"y{i}_f", b], [out], name=f"bias{i}"),
        ]
    return nodes
