"""What every pruning benchmark shares: the cached base model, calibration through sketches built
by the agent's own code, evaluation in ONNX Runtime, progress tables, JSON and MLflow output.

Calibration images come from the TRAINING split through the device distribution; evaluation uses
the TEST split of the same distribution; validation (for the oracle sweep) uses the held-out
training images the base model never trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import targets
from edge_agent.model import softmax
from qsae_shared.data import Split, load_split, preprocess
from qsae_shared.distributions import DeviceProfile, DeviceStream, Phase, sample_evenly
from qsae_shared.sketch import Sketch, SketchBuilder, parse_sketch
from workers import export, retrain, scenarios, training
from workers.training import Checkpoint

log = logging.getLogger(__name__)

BENCH_DIR = Path(".fleet/bench")


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc)
    p.add_argument("--json", type=Path, default=BENCH_DIR / f"{name}.json", help="where to write the rows")
    p.add_argument("--quick", action="store_true", help="a small, fast run (minutes)")
    p.add_argument("--seeds", type=int, default=1, help="repeat over this many seeds")
    p.add_argument("--mlflow", default=None, help="also log every row as an MLflow run at this tracking URI")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the pruning work")
    return p


def setup(threads: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)


def base_checkpoint() -> Checkpoint:
    return training.load_base(progress=True)


class BaseRuntime:
    """The dense base as the agent runs it (int8 artifact in ONNX Runtime): it produces the stem
    outputs and confidences the sketches carry."""

    def __init__(self, ck: Checkpoint) -> None:
        self.ck = ck
        self.release = retrain.export_base(ck)
        blob = self.release.files[retrain.MODEL_FILE]
        from qsae_shared import artifact

        self.session = export.session(artifact.to_onnx(artifact.unpack(blob)))
        self.hist_edges = np.asarray(self.release.manifest.hist_edges, dtype=np.float32)

    def sketches(self, scenario: str, seed: int, size: int = 512, window: int = 100) -> list[Sketch]:
        """Uploads of one device on `scenario` (training images) until `size` samples exist."""
        prof = scenarios.profile(scenario, seed=seed, device_id=f"bench-{scenario}-{seed}")
        return self.profile_sketches(prof, size, window, seed)

    def profile_sketches(self, prof: DeviceProfile, size: int = 512, window: int = 100,
                         seed: int = 0) -> list[Sketch]:
        """Uploads of a device with profile `prof` (training images, `window` inferences each,
        the sketch builder's reservoir seeded by `seed`) until `size` samples exist."""
        stream = DeviceStream(prof, split="train", role="calibration")
        builder = SketchBuilder(prof.device_id, self.ck.name, self.hist_edges, seed=seed)
        out: list[Sketch] = []
        have = 0
        now = 0.0
        while have < size:
            batch = stream.next_batch(window)
            logits, stem = export.run(self.session, preprocess(batch.images))
            now += window
            builder.update(stem, softmax(logits), now=now)
            s = parse_sketch(builder.emit())
            out.append(s)
            have += s.num_samples
        return out


def test_set(scenario: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n test-split images of the scenario's distribution: ((n, 1, 28, 28) input, (n,) labels).
    Each class's test images are scored once before any repeats (`sample_evenly`): on `full`,
    10,000 images are the whole test split."""
    x, y = sample_evenly(scenarios.profile(scenario).phases[0], n, load_split("test"),
                        np.random.default_rng(20_000 + seed))
    return preprocess(x), y


def validation_set(ck: Checkpoint, scenario: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n held-out TRAINING images (never trained on) through the scenario's distribution, each
    class's images once before any repeats."""
    return validation_images(ck, scenarios.profile(scenario).phases[0], n, 10_000 + seed)


def validation_images(ck: Checkpoint, phase: Phase, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n held-out TRAINING images (the last `validation_images` of the split, never trained on)
    through one phase's distribution, each class's images once before any repeats."""
    train = load_split("train")
    n_val = int(ck.config.get("validation_images", 5000))
    held = Split(train.images[len(train) - n_val:], train.labels[len(train) - n_val:])
    x, y = sample_evenly(phase, n, held, np.random.default_rng(seed))
    return preprocess(x), y


def onnx_correct(model_onnx: bytes, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) bool: which images the model classifies right."""
    return export.logits(export.session(model_onnx), x).argmax(1) == y


def artifact_logits(blob: bytes, x: np.ndarray) -> np.ndarray:
    """(N, K) logits of a packed artifact in ONNX Runtime, as a device computes them."""
    from qsae_shared import artifact

    return export.logits(export.session(artifact.to_onnx(artifact.unpack(blob))), x)


def artifact_correct(blob: bytes, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return artifact_logits(blob, x).argmax(1) == y


def onnx_accuracy(model_onnx: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(onnx_correct(model_onnx, x, y).mean())


def artifact_accuracy(blob: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(artifact_correct(blob, x, y).mean())


class Table:
    """Prints rows as they come, with a fixed set of columns."""

    def __init__(self, columns: list[tuple[str, str]]) -> None:
        self.columns = columns
        print("  ".join(f"{name[:12]:>12}" for name, _ in columns), flush=True)

    def row(self, r: dict[str, Any]) -> None:
        cells = []
        for name, fmt in self.columns:
            v = r.get(name)
            try:
                cells.append(f"{fmt.format(v):>12}" if v is not None else f"{'-':>12}")
            except (ValueError, TypeError):
                cells.append(f"{v!s:>12}")
        print("  ".join(cells), flush=True)


def progress(msg: str) -> None:
    print(f"... {msg}", file=sys.stderr, flush=True)


def clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return clean(v.item())
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    return v


def write_json(path: Path, name: str, rows: list[dict], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "rows": clean(rows), "created_at": time.time(), **clean(extra)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
    print(f"wrote {len(rows)} rows to {path}", flush=True)


def log_mlflow(uri: str | None, experiment: str, rows: list[dict], params: tuple[str, ...],
               metrics: tuple[str, ...], figure: Path | None = None, verdicts: dict | None = None) -> None:
    """One MLflow run per row: the row's params and metrics (numbers only); the benchmark's figure
    and the targets' verdicts (`targets.json`, and a tag per target: met / not met), if any, in one
    more run named `figure`."""
    if not uri:
        return
    import mlflow

    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None and uri.startswith("sqlite:///"):
        # a local store keeps its artifacts beside its database (not in ./mlruns of the caller)
        root = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts" / experiment.replace("/", "-")
        mlflow.create_experiment(experiment, artifact_location=root.as_uri())
    mlflow.set_experiment(experiment)
    for r in rows:
        name = "/".join(str(r.get(k)) for k in params if r.get(k) is not None)
        with mlflow.start_run(run_name=name[:250]):
            mlflow.log_params({k: r.get(k) for k in params})
            mlflow.log_metrics({k: float(r[k]) for k in metrics
                                if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                and math.isfinite(float(r[k]))})
    if figure is not None or verdicts:
        with mlflow.start_run(run_name="figure"):
            if figure is not None:
                mlflow.log_artifact(str(figure))
            if verdicts:
                mlflow.log_dict(clean(verdicts), "targets.json")
                mlflow.set_tags(targets.tags(verdicts))
    print(f"logged {len(rows)} runs to MLflow experiment {experiment!r} at {uri}", flush=True)
