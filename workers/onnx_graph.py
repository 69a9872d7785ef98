"""The ONNX graph of a (shrunk) sequential network, without its large weights.

Names: input `input` (N, C, H, W) float32, outputs `logits` (N, K) and `stem` (the stem's output,
which the agent's sketches summarize). Layer i reads weights `w{i}` and bias `b{i}`; the
artifact supplies them (see `qsae_shared.artifact`). A layer computes in fp32 (Conv / Gemm on
float weights dequantized at load time) or in int8 (QLinearConv or com.microsoft QGemm on the
int8 weights), per `compute`.

int8 layers form quantized chains: a tensor stays uint8 from one int8 layer to the next, with no
QuantizeLinear / DequantizeLinear in between.
- QuantizeLinear only where a float tensor enters an int8 layer, DequantizeLinear only where a
  uint8 tensor reaches an fp32 layer (after any pooling / flatten, which run on uint8).
- The bias is folded into the int8 operator as int32 (b / (x_scale * w_scale), rounded; the graph
  computes it from the stored fp32 bias and ONNX Runtime folds it at load).
- An int8 layer's output is quantized with the range of its *activated* output (`ActQuant.y_*`:
  after the ReLU that follows it, so the zero point is 0), which makes the ReLU the uint8 clamp:
  no Relu node. A QGemm outputs float instead when no int8 layer reads it (e.g. the logits).
- The next int8 layer's input range is that same range (`activation_quant` makes them equal).
`workers.export.simulate` computes exactly these roundings in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from workers import nets
from workers.errors import ExportError

INPUT, LOGITS, STEM = "input", "logits", "stem"
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class ActQuant:
    """uint8 quantization around one int8-compute layer."""

    x_scale: float  # input scale (the producing layer's y_scale, or the stem output's range)
    x_zero_point: int  # uint8 zero point of the input
    y_scale: float  # output scale, range of the output after its ReLU (if one follows)
    y_zero_point: int  # uint8 zero point of the output (0 when a ReLU follows)


def weight_names(i: int) -> tuple[str, str]:
    return f"w{i}", f"b{i}"


def quantized_output(spec: nets.Spec, compute: dict[int, str], i: int) -> bool:
    """Whether int8 layer i hands on a uint8 tensor: always for a conv (QLinearConv), for a
    linear layer only when the next weighted layer computes in int8 too."""
    layers = spec["layers"]
    if layers[i]["type"] == "conv":
        return True
    nxt = next((j for j in range(i + 1, len(layers)) if layers[j]["type"] in nets.WEIGHTED), None)
    return nxt is not None and compute.get(nxt, "fp32") == "int8"


@dataclass
class _Quantized:
    """A uint8 tensor in flight: the names of its scale and zero point, and the zero point."""

    scale: str
    zero_point: str
    zp_value: int


def build_graph(spec: nets.Spec, compute: dict[int, str] | None = None,
                act: dict[int, ActQuant] | None = None) -> onnx.ModelProto:
    """The model with every weight and bias left out (they come from the artifact)."""
    compute = compute or {}
    act = act or {}
    int8_stem = [i for i, c in compute.items() if c == "int8" and i < spec["stem_end"]]
    if int8_stem:
        raise ExportError(f"stem layers {int8_stem} must compute in fp32 (the stem output is float "
                          "and the same in every version)")
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shapes = nets.shape_trace(spec)
    layers = spec["layers"]
    h = INPUT
    q: _Quantized | None = None  # set while h is uint8
    stem_last = spec["stem_end"] - 1
    for i, layer in enumerate(layers):
        kind = layer["type"]
        out = STEM if i == stem_last else (LOGITS if i == len(layers) - 1 else f"h{i}")
        int8 = kind in nets.WEIGHTED and compute.get(i, "fp32") == "int8"
        needs_float = (kind in nets.WEIGHTED and not int8) or (kind == "relu" and q is not None and q.zp_value != 0)
        if q is not None and needs_float:
            nodes.append(helper.make_node("DequantizeLinear", [h, q.scale, q.zero_point], [f"{h}_f"],
                                          name=f"dequant{i}"))
            h, q = f"{h}_f", None
        if int8:
            h, q = _int8_layer(i, layer, h, out, q, act[i], quantized_output(spec, compute, i), nodes, inits)
            continue
        if kind == "conv":
            p = layer.get("padding", 0)
            nodes.append(helper.make_node("Conv", [h, *weight_names(i)], [out], name=f"conv{i}",
                                          kernel_shape=[layer["kernel"]] * 2, pads=[p] * 4))
        elif kind == "linear":
            nodes.append(helper.make_node("Gemm", [h, *weight_names(i)], [out], name=f"gemm{i}", transB=1))
        elif kind == "relu":
            if q is not None:  # a uint8 tensor with zero point 0 is already clamped at 0
                continue
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


def _scalar(inits: list[onnx.TensorProto], name: str, value: float | int, dtype: type) -> str:
    inits.append(numpy_helper.from_array(np.array(value, dtype), name))
    return name


def _int8_layer(i: int, layer: dict, h: str, out: str, q: _Quantized | None, a: ActQuant,
                quantized_out: bool, nodes: list[onnx.NodeProto],
                inits: list[onnx.TensorProto]) -> tuple[str, _Quantized | None]:
    """Nodes of one int8 layer; returns its output name and, if uint8, its quantization."""
    w, b = weight_names(i)
    if q is None:  # a float tensor enters the chain
        q = _Quantized(_scalar(inits, f"x{i}_scale", a.x_scale, np.float32),
                       _scalar(inits, f"x{i}_zp", a.x_zero_point, np.uint8), a.x_zero_point)
        nodes.append(helper.make_node("QuantizeLinear", [h, q.scale, q.zero_point], [f"{h}_q{i}"],
                                      name=f"quant{i}"))
        h = f"{h}_q{i}"
    # int32 bias at scale x_scale * w_scale (constant-folded by ONNX Runtime at load).
    nodes += [helper.make_node("Mul", [q.scale, f"{w}_scale"], [f"{b}_qs"], name=f"bias_scale{i}"),
              helper.make_node("Div", [b, f"{b}_qs"], [f"{b}_div"], name=f"bias_div{i}"),
              helper.make_node("Round", [f"{b}_div"], [f"{b}_round"], name=f"bias_round{i}"),
              helper.make_node("Cast", [f"{b}_round"], [f"{b}_i32"], name=f"bias_cast{i}",
                               to=TensorProto.INT32)]
    y = _Quantized(_scalar(inits, f"y{i}_scale", a.y_scale, np.float32),
                   _scalar(inits, f"y{i}_zp", a.y_zero_point, np.uint8), a.y_zero_point)
    ins = [h, q.scale, q.zero_point, w, f"{w}_scale", f"{w}_zero_point"]
    name = f"{out}_u8" if quantized_out else out
    if layer["type"] == "conv":
        p = layer.get("padding", 0)
        nodes.append(helper.make_node("QLinearConv", [*ins, y.scale, y.zero_point, f"{b}_i32"], [name],
                                      name=f"qconv{i}", kernel_shape=[layer["kernel"]] * 2, pads=[p] * 4))
    else:
        extra = [y.scale, y.zero_point] if quantized_out else []
        nodes.append(helper.make_node("QGemm", [*ins, f"{b}_i32", *extra], [name], name=f"qgemm{i}",
                                      domain="com.microsoft", transB=1))
    return name, (y if quantized_out else None)
