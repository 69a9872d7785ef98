"""Per-layer compute choice, by measurement: int8 (QLinearConv / QGemm) or fp32 (weights
dequantized at load), whichever runs the whole model faster in ONNX Runtime on this machine.

Weights are stored int8 either way; only the compute differs. Which wins depends on the CPU
(VNNI or not) and on the widths, so it is measured (batch 64, one thread, interleaved medians)
per shape: first every layer int8 against every layer fp32, then, from the faster of
the two, each layer's mode flipped in turn, largest layer first, kept only on a clear win (5 %,
twice in a row).
A choice holds for one CPU, one ONNX Runtime and one set of widths, so it is kept on disk
(`FLEET_COMPUTE_CACHE`, default `.fleet/cache/compute-choice.json`) and measured once per
machine and shape (about 1.2 s a shape here), not once per retrain: widths come in multiples of
4, so a fleet's retrains meet the same shapes again and again.
Starting from whole chains matters: consecutive int8 layers hand uint8 tensors to each other
(`workers.onnx_graph`), so one int8 layer alone pays a quantize and a dequantize that a chain
pays once.
The stem always computes in fp32: its output is what the sketches carry, and it must be the same
in every version (measured on the pinned CNN, an int8 stem conv with one input channel was also
1.8x slower at batch 64).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from functools import cache
from pathlib import Path

import numpy as np

from qsae_shared import cpu
from workers import export, nets
from workers.calibration import Calibration
from workers.masks import Pruned
from workers.onnx_graph import ActQuant

log = logging.getLogger(__name__)

_CACHE: dict[str, dict[int, str]] = {}  # this process's choices (those on disk included once read)
DEFAULT_CACHE_FILE = ".fleet/cache/compute-choice.json"
MODES = ("fp32", "int8")


def cache_file() -> Path:
    return Path(os.environ.get("FLEET_COMPUTE_CACHE", DEFAULT_CACHE_FILE))


def use_cache_file(path: Path) -> None:
    """Keep choices in `path` from now on (this process and those it starts), forgetting the ones
    this process has read (benchmarks: the same cold start for every configuration)."""
    os.environ["FLEET_COMPUTE_CACHE"] = str(path)
    _CACHE.clear()


@cache
def machine() -> str:
    """What a measured choice holds for: this CPU (model and instruction-set flags), the form of
    its int8 weights (`qsae_shared.cpu`) and this ONNX Runtime."""
    import onnxruntime

    model, flags = cpu.model_and_flags()
    key = f"{model}|{' '.join(sorted(flags))}|{cpu.int8_weight_format()}|{onnxruntime.__version__}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _read_disk() -> dict[str, dict]:
    path = cache_file()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the compute-choice cache %s: %s", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def _stored(key: str, weighted: list[int], stem: dict[int, str]) -> dict[int, str] | None:
    """The choice on disk for `key`, if it is there, names a mode for each weighted layer and
    keeps the stem fp32."""
    entry = _read_disk().get(key)
    compute = entry.get("compute") if isinstance(entry, dict) else None
    if not isinstance(compute, dict):
        return None
    try:
        out = {int(k): v for k, v in compute.items()}
    except ValueError:
        return None
    ok = set(out) == set(weighted) and all(v in MODES for v in out.values())
    return out if ok and all(out[i] == mode for i, mode in stem.items()) else None


def _store(key: str, compute: dict[int, str], widths: list[int]) -> None:
    """Add one choice to the file (merged with what other processes wrote meanwhile; atomic)."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = _read_disk()
        doc[key] = {"compute": {str(k): v for k, v in compute.items()}, "widths": widths,
                    "machine": machine(), "measured_at": time.time()}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only disk costs a re-measurement next time, not the retrain
        log.warning("could not write the compute-choice cache %s: %s", path, exc)


def _model(p: Pruned, compute: dict[int, str], act: dict[int, ActQuant]) -> bytes:
    """The runnable ONNX model an artifact would unpack to (without packing it)."""
    from qsae_shared import artifact
    from workers import onnx_graph

    graph = onnx_graph.build_graph(p.spec, compute, act).SerializeToString()
    tensors = export.packed_tensors(p.net, p.spec, p.masks, compute)
    return artifact.to_onnx(artifact.Contents({}, graph, {t.name: t for t in tensors}))


def choose_compute(p: Pruned, calib: Calibration, mode: str = "auto",
                   batch: int = 64) -> tuple[dict[int, str], dict[int, ActQuant]]:
    """layer index -> "fp32" | "int8", and the activation ranges of the int8 layers."""
    layers = [i for i in nets.weighted_indices(p.spec) if i >= p.spec["stem_end"]]
    act = export.activation_quant(p.net, p.spec, calib, layers)
    stem = {i: "fp32" for i in nets.weighted_indices(p.spec) if i < p.spec["stem_end"]}
    if mode in ("fp32", "int8"):
        return {**stem, **{i: mode for i in layers}}, act
    layer_specs = nets.spec_of(p.net, p.spec)["layers"]
    key = hashlib.sha256(f"{machine()}|batch {batch}|{layer_specs!r}".encode()).hexdigest()[:24]
    if key not in _CACHE and (stored := _stored(key, nets.weighted_indices(p.spec), stem)) is not None:
        _CACHE[key] = stored
    if key not in _CACHE:
        shape = tuple(p.spec["input_shape"])

        def faster(a: dict[int, str], b: dict[int, str]) -> tuple[dict[int, str], dict[str, float]]:
            """b if it wins clearly twice in a row (one noisy round on a shared machine often
            shows a 5 % difference that is not there), else a."""
            models = {"a": _model(p, a, act), "b": _model(p, b, act)}
            for _ in range(2):
                ms = compare_ms(models, batch, rounds=10, per_round=2, input_shape=shape)
                if ms["b"] >= 0.95 * ms["a"]:
                    return a, ms
            return b, ms

        all_int8 = {**stem, **{i: "int8" for i in layers}}
        all_fp32 = {**stem, **{i: "fp32" for i in layers}}
        compute, ms = faster(all_fp32, all_int8)
        log.info("all fp32 %.3f ms, all int8 %.3f ms (batch %d)", ms["a"], ms["b"], batch)
        for i in sorted(layers, key=lambda i: -_layer_macs(p.spec, i)):
            compute, _ = faster(compute, {**compute, i: "fp32" if compute[i] == "int8" else "int8"})
        _CACHE[key] = compute
        _store(key, compute, [layer["out"] for layer in layer_specs if layer["type"] in nets.WEIGHTED])
        log.info("compute per layer: %s", compute)
    return dict(_CACHE[key]), act


def _layer_macs(spec: nets.Spec, i: int) -> int:
    shapes = nets.shape_trace(spec)
    layer = spec["layers"][i]
    if layer["type"] == "conv":
        return layer["in"] * layer["kernel"] ** 2 * int(np.prod(shapes[i]))
    return layer["in"] * layer["out"]

def compare_ms(models: dict[str, bytes], batch: int, threads: int = 1, rounds: int = 30,
               per_round: int = 5, input_shape: tuple[int, ...] = (1, 28, 28)) -> dict[str, float]:
    """Median latency (ms per run) of several models measured interleaved, round by round, so
    that load from other processes hits them alike."""
    sessions = {k: export.session(m, threads) for k, m in models.items()}
    x = np.random.default_rng(0).normal(size=(batch, *input_shape)).astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(5):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) / per_round)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}
