"""Measurements of the agent on a real model: sketch bytes per upload, resident memory, inference
latency through the agent vs bare ONNX Runtime, and the label-free estimate's error.

    python -m edge_agent.bench --model-dir DIR [--quick] [--json PATH]

DIR holds `manifest.json` and `files/` (what the device downloads for one version), e.g. the dense
int8 base from `workers.retrain.export_base`. Device-side code only: no torch is loaded, so the
memory figures are the agent's own.
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import typer

from edge_agent.model import LoadedModel
from edge_agent.runtime import Runtime, prepare_input
from qsae_shared.artifact import materialize
from qsae_shared.distributions import DeviceProfile, Phase
from qsae_shared.manifest import Manifest

app = typer.Typer(add_completion=False)


def load_model_dir(model_dir: Path, out_dir: Path) -> tuple[Manifest, Path]:
    manifest = Manifest.from_json((model_dir / "manifest.json").read_bytes())
    return manifest, materialize(manifest, model_dir / "files", out_dir)


def _stream(n: int, seed: int = 0) -> Any:
    return DeviceProfile("bench", (Phase(10**9),), seed=seed).stream("test", "bench")


def sketch_bytes(manifest: Manifest, onnx: Path, counts: list[int], batch: int = 250) -> dict[str, int]:
    """Serialized size of the sketch after `counts` inferences (one growing window)."""
    rt = Runtime("bench-device", manifest.base_model)
    rt.swap(LoadedModel(manifest, onnx))
    stream = _stream(max(counts))
    sizes: dict[str, int] = {}
    done = 0
    for target in sorted(counts):
        while done < target:
            n = min(batch, target - done)
            rt.predict(stream.next_batch(n).images)
            done += n
        builder = rt.open_sketch()  # the open window, serialized without closing it
        assert builder is not None
        sizes[str(target)] = len(builder.build().to_bytes())
    return sizes


def latency(manifest: Manifest, onnx: Path, batches: list[int], repeats: int) -> dict[str, Any]:
    """Median milliseconds per call: bare ONNX Runtime on ready input vs the agent's predict on raw
    uint8 images (preprocessing, softmax, sketch update, telemetry and feedback bookkeeping), with
    the sketch updated inline and on the background thread (the daemon's default); plus the CPU
    time per call of each, since the background thread moves work off the call, it does not
    remove it."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    bare = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    model = LoadedModel(manifest, onnx, intra_op_threads=1)
    runtimes = {"agent_inline_sketch": Runtime("bench-device", manifest.base_model),
                "agent_background_sketch": Runtime("bench-device", manifest.base_model, sketch_in_background=True)}
    for rt in runtimes.values():
        rt.swap(model)
    stream = _stream(10_000, seed=1)
    outputs = [manifest.output_name, manifest.stem_output_name]
    out: dict[str, Any] = {}
    for b in batches:
        raw_u8 = (stream.next_batch(b).images * 255).round().astype(np.uint8)  # (b, 28, 28)
        x = prepare_input(raw_u8, manifest)
        feed = {manifest.input_name: x}
        calls: dict[str, Any] = {"bare_onnxruntime": functools.partial(bare.run, outputs, feed)}
        for name, rt in runtimes.items():
            calls[name] = functools.partial(rt.predict, raw_u8)
        res: dict[str, Any] = {}
        for name, call in calls.items():
            for _ in range(max(5, repeats // 10)):  # warm-up
                call()
            settle = runtimes[name].open_sketch if name in runtimes else (lambda: None)
            settle()
            wall = []
            cpu0 = time.process_time()
            for _ in range(repeats):  # back to back: what a saturated device pays per call
                t0 = time.perf_counter()
                call()
                wall.append((time.perf_counter() - t0) * 1000)
            settle()  # the background work belongs to these calls
            cpu = (time.process_time() - cpu0) * 1000 / repeats
            res[name] = {"median_ms": statistics.median(wall), "p95_ms": float(np.percentile(wall, 95)),
                         "cpu_ms_per_call": cpu}
        gap_s = 4 * res["bare_onnxruntime"]["median_ms"] / 1000 + 0.0005
        for name, call in calls.items():  # paced: calls arrive with idle time between them
            settle = runtimes[name].open_sketch if name in runtimes else (lambda: None)
            settle()
            paced = []
            for _ in range(max(50, repeats // 4)):
                t0 = time.perf_counter()
                call()
                paced.append((time.perf_counter() - t0) * 1000)
                time.sleep(gap_s)
            res[name]["paced_median_ms"] = statistics.median(paced)
            res[name]["paced_p95_ms"] = float(np.percentile(paced, 95))
        res["paced_gap_ms"] = gap_s * 1000
        for name in runtimes:
            for k in ("median_ms", "paced_median_ms", "cpu_ms_per_call"):
                res[name][f"{k}_ratio_to_bare"] = res[name][k] / res["bare_onnxruntime"][k]
        out[f"batch_{b}"] = res
    for rt in runtimes.values():
        rt.close()
    return out


_RSS_SCRIPT = """
import json, sys, time, shutil
from pathlib import Path
mode, model_dir, work, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
def rss():
    d = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
    return {k: int(d[k].split()[0]) * 1024 for k in ('VmRSS', 'VmHWM')}
import numpy as np
from qsae_shared.manifest import Manifest
from qsae_shared.data import load_split
x = load_split('test').images[:1000]
manifest = Manifest.from_json((model_dir / 'manifest.json').read_bytes())
if mode == 'bare':
    import onnxruntime as ort
    from qsae_shared.artifact import materialize
    from edge_agent.runtime import prepare_input
    onnx = materialize(manifest, model_dir / 'files', work / 'bare')
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    s = ort.InferenceSession(str(onnx), o, providers=['CPUExecutionProvider'])
    for i in range(n // 32):
        s.run(None, {manifest.input_name: prepare_input(x[(i * 32) % 960:(i * 32) % 960 + 32], manifest)})
else:
    from edge_agent.agent import Agent
    from edge_agent.config import load_settings
    from edge_agent.state import Credentials, save_credentials
    from edge_agent.store import ModelStore, Pointer
    state = work / 'agent'
    save_credentials(state, Credentials('bench', 't', 'http://127.0.0.1:9', {}, manifest.base_model, 60, 0))
    store = ModelStore(state)
    st = store.staging_dir(manifest.version_id)
    for f in (model_dir / 'files').iterdir():
        shutil.copy(f, st / 'files' / f.name)
    store.commit(manifest.version_id, st, manifest.to_json())
    store.set_pointer(Pointer(manifest.version_id, manifest.version_id, None))
    agent = Agent(load_settings(state_dir=state, telemetry_interval_s=1e9, sketch_interval_s=1e9))
    assert agent.runtime.version == manifest.version_id
    for i in range(n // 32):
        p = agent.predict(x[(i * 32) % 960:(i * 32) % 960 + 32])
        agent.feedback(p.ids[:8], np.zeros(8, np.int64))
        if i % 100 == 99:
            agent.flush(force=True)  # telemetry and sketches into the on-disk outbox
print(json.dumps(rss()))
"""


def resident_memory(model_dir: Path, inferences: int) -> dict[str, Any]:
    """Peak and final RSS of a process serving the model bare vs through a full Agent."""
    out: dict[str, Any] = {}
    for mode in ("bare", "agent"):
        with tempfile.TemporaryDirectory() as work:
            r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, mode, str(model_dir), work, str(inferences)],
                               capture_output=True, text=True, check=True)
            out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    out["agent_extra_bytes"] = out["agent"]["VmHWM"] - out["bare"]["VmHWM"]
    return out


def estimate_error(manifest: Manifest, onnx: Path, scenarios: list[str]) -> dict[str, Any]:
    from edge_agent.simulator import evaluate_offline

    res: dict[str, Any] = {}
    for sc in scenarios:
        r = evaluate_offline(sc, manifest, onnx, threads=1)
        res[sc] = {"inferences": r.inferences, "accuracy": r.accuracy, "mae_pp_per_window": r.estimate_mae_pp,
                   "mae_pp_per_device_phase": r.estimate_phase_mae_pp, "eval_window": r.config["eval_window"],
                   "windows": sum(len(d.windows) for d in r.devices),
                   "max_abs_error_pp": max((abs(w.estimated_accuracy - w.true_accuracy) * 100
                                            for d in r.devices for w in d.windows), default=None)}
    return res


@app.command()
def main(model_dir: Path = typer.Option(..., "--model-dir", help="manifest.json + files/ of one version"),
         quick: bool = typer.Option(False, help="fewer repeats and inferences"),
         json_out: Path = typer.Option(None, "--json")) -> None:
    work = Path(tempfile.mkdtemp(prefix="qsae-agent-bench-"))
    try:
        manifest, onnx = load_model_dir(model_dir, work)
        counts = [1000, 10_000] if quick else [1000, 10_000, 100_000]
        result = {
            "version": manifest.version_id, "download_bytes": manifest.download_bytes,
            "onnxruntime": ort.__version__,
            "sketch_bytes": sketch_bytes(manifest, onnx, counts),
            "latency_ms": latency(manifest, onnx, [1, 64], 200 if quick else 1000),
            "rss_bytes": resident_memory(model_dir, 2000 if quick else 20_000),
            "estimate": estimate_error(manifest, onnx, ["smoke"] if quick else ["steady", "drift", "demo"]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1)
    typer.echo(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text)


if __name__ == "__main__":
    app()
