"""int8 export: the pruned, shrunk network as the artifact a device pulls.

Every weight is stored int8 (symmetric, per output channel, fp32 scales); the unstructured
masks are bit-packed and only kept weights are stored; biases stay fp32. The graph is ONNX
(`workers.onnx_graph`) with the stem's output as an extra output. Per layer the runtime computes
in fp32 (weights dequantized at load) or int8 (QLinearConv / QGemm), whichever measures faster
(`workers.runtime_choice`). The torch simulation of an artifact (`simulate`) computes what ONNX
Runtime computes, up to float rounding.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from qsae_shared import artifact
from workers import nets, onnx_graph
from workers.calibration import Calibration
from workers.errors import ExportError
from workers.masks import Pruned
from workers.onnx_graph import ActQuant
from workers.quantization import quantize

log = logging.getLogger(__name__)


def packed_tensors(net: nn.Sequential, spec: nets.Spec, masks: dict[int, torch.Tensor],
                   compute: dict[int, str] | None = None) -> list[artifact.PackedTensor]:
    """Every weight as int8 + scales (+ its mask when it has one), every bias as float32."""
    compute = compute or {}
    out = []
    for i in nets.weighted_indices(spec):
        w_name, b_name = onnx_graph.weight_names(i)
        layer = nets.weighted_layer(net, i)
        q, s = quantize(layer.weight.detach())
        mask = masks.get(i)
        out.append(artifact.PackedTensor(w_name, q.numpy(), s.numpy(),
                                         None if mask is None else mask.numpy(),
                                         compute.get(i, "fp32")))
        out.append(artifact.PackedTensor(b_name, nets.bias(layer).detach().numpy().astype(np.float32)))
    return out


def activation_quant(net: nn.Sequential, spec: nets.Spec, calib: Calibration,
                     layers: list[int]) -> dict[int, ActQuant]:
    """uint8 ranges of int8-compute layers, from the calibration set: each weighted layer's
    output range is taken after the ReLU that follows it (zero point 0), and the next weighted
    layer's input range is that same range, so a uint8 tensor passes from one int8 layer to the
    next unchanged (`workers.onnx_graph`). The first layer after the stem reads the stem's range."""
    out: dict[int, ActQuant] = {}
    kinds = [layer["type"] for layer in spec["layers"]]
    h = calib.stem_out
    x = _uint8(h)
    with torch.no_grad():
        for i in range(spec["stem_end"], len(kinds)):
            nxt = net[i](h)
            if kinds[i] in nets.WEIGHTED:
                activated = torch.relu(nxt) if i + 1 < len(kinds) and kinds[i + 1] == "relu" else nxt
                y = _uint8(activated)
                if i in layers:
                    out[i] = ActQuant(*x, *y)
                x = y
            h = nxt
    return out


def _uint8(t: torch.Tensor) -> tuple[float, int]:
    lo, hi = min(float(t.min()), 0.0), max(float(t.max()), 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return scale, round(-lo / scale)


def artifact_meta(p: Pruned, method: str | None = None, act: dict[int, ActQuant] | None = None) -> dict:
    """What the artifact says about itself: the shrunk spec, which dense units it kept, the
    method, and the activation ranges of int8-compute layers."""
    return {"spec": p.spec, "keep": {str(k): [int(i) for i in v] for k, v in p.keep.items()},
            "method": method,
            "act": {str(i): [q.x_scale, q.x_zero_point, q.y_scale, q.y_zero_point]
                    for i, q in (act or {}).items()}}


def build_artifact(pruned: Pruned, compute: dict[int, str] | None = None,
                   act: dict[int, ActQuant] | None = None, method: str | None = None) -> bytes:
    """The artifact file (its size is what the compression ratio counts)."""
    compute = compute or {}
    graph = onnx_graph.build_graph(pruned.spec, compute, act).SerializeToString()
    return artifact.pack(graph, packed_tensors(pruned.net, pruned.spec, pruned.masks, compute),
                         artifact_meta(pruned, method, act if compute else None))


def shipped_size(p: Pruned, calib: Calibration, compute: str = "auto", method: str | None = None) -> int:
    """Bytes of `p`'s artifact as it will ship: with compute "fp32" all layers fp32, otherwise int8
    after the stem (what the compute choice picked on every CPU measured), whose quantize nodes and
    activation ranges add a few hundred bytes to the file. The search judges compression on this
    size, so a target it meets is met by the file (judged on the fp32 layout, a static mask at 28.8x
    shipped at 28.7x)."""
    weighted = nets.weighted_indices(p.spec)
    if compute == "fp32":
        return len(build_artifact(p, {i: "fp32" for i in weighted}, None, method))
    layers = [i for i in weighted if i >= p.spec["stem_end"]]
    act = activation_quant(p.net, p.spec, calib, layers)
    return len(build_artifact(p, {i: "int8" if i in layers else "fp32" for i in weighted}, act, method))


def dense_onnx(net: nn.Sequential, spec: nets.Spec) -> bytes:
    """The dense fp32 network as ONNX (the latency and accuracy reference; never shipped)."""
    from onnx import numpy_helper

    model = onnx_graph.build_graph(spec)
    for i in nets.weighted_indices(spec):
        w_name, b_name = onnx_graph.weight_names(i)
        layer = nets.weighted_layer(net, i)
        model.graph.initializer.append(numpy_helper.from_array(layer.weight.detach().numpy(), w_name))
        model.graph.initializer.append(numpy_helper.from_array(nets.bias(layer).detach().numpy(), b_name))
    return model.SerializeToString()


def session(model: bytes, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) inputs -> ((N, K) logits, (N, ...) stem outputs)."""
    logits, stems = _batched(sess, [onnx_graph.LOGITS, onnx_graph.STEM], x, batch)
    return logits, stems


def logits(sess: ort.InferenceSession, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """(N, C, H, W) inputs -> (N, K) logits, without keeping the stem outputs (gigabytes on long streams)."""
    (out,) = _batched(sess, [onnx_graph.LOGITS], x, batch)
    return out


def _batched(sess: ort.InferenceSession, names: list[str], x: np.ndarray, batch: int) -> list[np.ndarray]:
    parts = [sess.run(names, {onnx_graph.INPUT: x[i:i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def simulate(net: nn.Sequential, spec: nets.Spec, compute: dict[int, str] | None = None,
             act: dict[int, ActQuant] | None = None) -> nn.Sequential:
    """A torch network that computes what the artifact computes in ONNX Runtime: int8-stored
    weights everywhere; int8-compute layers also round their input to uint8, their bias to int32
    at scale x_scale * w_scale and, when they hand on a uint8 tensor, their output to uint8."""
    sim = copy.deepcopy(net).eval()
    scales: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i in nets.weighted_indices(spec):
            w = nets.weighted_layer(sim, i).weight
            q, s = quantize(w)
            w.copy_(q.float() * s.view((-1,) + (1,) * (q.dim() - 1)))
            scales[i] = s
    layers: list[nn.Module] = []
    for i, m in enumerate(sim):
        if compute and compute.get(i) == "int8" and act is not None:
            layers.append(_FakeQuantLayer(nets.weighted_layer(sim, i), act[i], scales[i],
                                          onnx_graph.quantized_output(spec, compute, i)))
        else:
            layers.append(m)
    return nn.Sequential(*layers).eval()


class _FakeQuantLayer(nn.Module):
    def __init__(self, layer: nn.Conv2d | nn.Linear, q: ActQuant, w_scale: torch.Tensor, quantized_out: bool) -> None:
        super().__init__()
        self.layer, self.q, self.quantized_out = layer, q, quantized_out
        with torch.no_grad():  # the int32 bias, as the graph computes it (float32 ops, half to even)
            bias_scale = torch.tensor(q.x_scale, dtype=torch.float32) * w_scale.float()  # (out,)
            self.bias = torch.round(nets.bias(layer).float() / bias_scale) * bias_scale

    @staticmethod
    def _fq(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._fq(x, self.q.x_scale, self.q.x_zero_point)
        if isinstance(self.layer, nn.Conv2d):
            y = nn.functional.conv2d(x, self.layer.weight, self.bias, padding=self.layer.padding)  # (N, C, H, W)
        else:
            y = nn.functional.linear(x, self.layer.weight, self.bias)  # (N, out)
        return self._fq(y, self.q.y_scale, self.q.y_zero_point) if self.quantized_out else y


def check_parity(model: bytes, sim: nn.Sequential, x: np.ndarray, atol: float = 1e-3) -> float:
    """Max |logit difference| between ONNX Runtime and the torch simulation on x."""
    logits, _ = run(session(model), x)
    with torch.no_grad():
        ref = sim(torch.from_numpy(x)).numpy()
    diff = float(np.abs(logits - ref).max())
    if not np.isfinite(diff):
        raise ExportError("the exported model produces NaN or Inf")
    return diff
