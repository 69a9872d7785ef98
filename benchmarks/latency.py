"""Inference latency in ONNX Runtime: the dense fp32 network against pruned int8 artifacts.

    python -m benchmarks.latency [--quick] [--json PATH] [--mlflow URI] [--profile]

Variants: `dense_fp32` (the reference), `dense_int8` (the base artifact: int8 weights, compute
chosen per layer), `default_artifact` (what the default policy ships for scenario `full`, calibrated
through sketches), and `default_artifact_fp32` (the same artifact with fp32 compute everywhere).
Batch 1 and 64, 1 and 2 threads; every configuration is measured interleaved with the others,
round by round after a warm-up, and reported as the median. A round runs each model 20 times at
batch 1 and 10 times at batch 64, back to back, as a device runs its one model: with 2 runs a
round at batch 64, the first run after a switch between four models weighed enough to take the
default artifact's speed-up from 2.64x to 2.22x on session 6's CPU (sequential runs: 2.67x).
`--profile` also prints (and writes to the JSON) ONNX Runtime's per-operator times of `dense_fp32`
and `default_artifact` at batch 64, one thread, after its graph optimizations (so fused and
layout-changed operators show as such).
"""

from __future__ import annotations

import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from benchmarks import common, plots, targets
from qsae_shared import artifact
from qsae_shared.compression import compression_ratio
from workers import export, nets, retrain
from workers.calibration import from_sketches
from workers.policy import DEFAULT_POLICY
from workers.runtime_choice import choose_compute, compare_ms

NAME = "latency"
COLUMNS = [("variant", "{}"), ("batch", "{}"), ("threads", "{}"), ("median_ms", "{:.4f}"),
           ("speedup", "{:.2f}x"), ("compression_ratio", "{:.1f}"), ("drop_pp", "{:+.2f}")]


def op_profile(model: bytes, batch: int = 64, runs: int = 200) -> list[dict]:
    """Median microseconds per operator over `runs` runs (first quarter dropped as warm-up),
    one thread, all graph optimizations, slowest first."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).normal(size=(batch, 1, 28, 28)).astype(np.float32)
        for _ in range(runs):
            sess.run(None, {sess.get_inputs()[0].name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[(e["args"].get("op_name", "?"), e["name"].removesuffix("_kernel_time"))].append(e["dur"])
    rows = [{"op": op, "node": node, "median_us": float(np.median(v[len(v) // 4:]))}
            for (op, node), v in per.items()]
    return sorted(rows, key=lambda r: -r["median_us"])


def main() -> None:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true", help="also print per-operator times at batch 64")
    args = p.parse_args()
    common.setup(args.threads)
    t0 = time.perf_counter()
    ck = common.base_checkpoint()
    rt = common.BaseRuntime(ck)
    dense_params = nets.param_count(ck.spec)
    common.progress("default policy on scenario full (sketches, search, export)")
    sketches = rt.sketches("full", 0)
    result = retrain.retrain(ck, sketches, DEFAULT_POLICY, device_id="bench-full")
    blob = result.files[retrain.MODEL_FILE]
    calib = from_sketches(ck.network(), ck.spec, sketches)
    fp32_compute, _ = choose_compute(result.chosen.pruned, calib, "fp32")
    fp32_blob = export.build_artifact(result.chosen.pruned, fp32_compute, None, result.chosen.method)
    x, y = common.test_set("full", 0, 2000 if args.quick else 10_000)
    dense_onnx = export.dense_onnx(ck.network(), ck.spec)
    dense_acc = common.onnx_accuracy(dense_onnx, x, y)
    base_blob = rt.release.files[retrain.MODEL_FILE]
    variants = {
        "dense_fp32": (dense_onnx, None),
        "dense_int8": (artifact.to_onnx(artifact.unpack(base_blob)), base_blob),
        "default_artifact": (artifact.to_onnx(artifact.unpack(blob)), blob),
        "default_artifact_fp32": (artifact.to_onnx(artifact.unpack(fp32_blob)), fp32_blob),
    }
    info: dict[str, dict[str, Any]] = {}
    for name, (model, packed) in variants.items():
        acc = common.onnx_accuracy(model, x, y)
        info[name] = {"compression_ratio": None if packed is None else compression_ratio(dense_params, len(packed)),
                      "drop_pp": 100 * (dense_acc - acc), "accuracy": acc}
    sim, _ = retrain.simulate_network(blob)  # the torch simulation of the shipped artifact
    with torch.no_grad():
        sim_acc = float((sim(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    parity = {"onnx_accuracy": info["default_artifact"]["accuracy"], "torch_simulation_accuracy": sim_acc,
              "diff_pp": 100 * (info["default_artifact"]["accuracy"] - sim_acc)}
    print(f"parity: ONNX Runtime {parity['onnx_accuracy']:.4f}, torch simulation {sim_acc:.4f}", flush=True)
    rows = []
    table = common.Table(COLUMNS)
    rounds = 20 if args.quick else 40
    for threads in (1, 2):
        for batch in (1, 64):
            common.progress(f"batch {batch}, {threads} thread(s)")
            per_round = 20 if batch == 1 else 10
            ms = compare_ms({k: m for k, (m, _) in variants.items()}, batch, threads, rounds, per_round)
            for name in variants:
                row = {"model": f"{ck.name}@{ck.base_version}", "variant": name, "batch": batch,
                       "threads": threads, "median_ms": ms[name], "speedup": ms["dense_fp32"] / ms[name],
                       **info[name]}
                rows.append(row)
                table.row(row)
    profiles = {}
    if args.profile:
        for name in ("dense_fp32", "default_artifact"):
            common.progress(f"per-operator profile of {name}, batch 64, 1 thread")
            profiles[name] = op_profile(variants[name][0], runs=50 if args.quick else 200)
            for r in profiles[name]:
                print(f"  {name:>16}  {r['op']:>18}  {r['node']:>32}  {r['median_us']:8.1f} us", flush=True)
            print(f"  {name:>16}  {'sum':>18}  {'':>32}  {sum(r['median_us'] for r in profiles[name]):8.1f} us")
    compute = result.manifest.method.get("compute", {})
    verdicts = targets.latency_verdicts(rows)
    common.write_json(args.json, NAME, rows, quick=args.quick, default_policy=DEFAULT_POLICY.describe(),
                      default_widths=result.manifest.method.get("widths"), default_compute=compute,
                      default_kl=result.metrics["kl"], dense_accuracy=dense_acc, parity=parity,
                      op_profile_batch64=profiles or None, seconds=time.perf_counter() - t0,
                      targets=verdicts)
    common.log_mlflow(args.mlflow, f"qsae-fleet/{NAME}", rows, figure=plots.save(args.json), verdicts=verdicts,
                      params=("model", "variant", "batch", "threads"),
                      metrics=("median_ms", "speedup", "compression_ratio", "drop_pp"))
    print("\n".join(targets.lines(verdicts)), flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
