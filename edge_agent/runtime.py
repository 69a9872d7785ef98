"""The device's inference API: `predict(batch)` and `feedback(ids, labels)`.

Each `predict` runs the deployed model (ONNX Runtime), feeds the stem's output and the output
probabilities into the sketch builder, adds to the open telemetry window, remembers the prediction
for late feedback, and keeps the input in a small ring on the device for shadow evaluation of the
next model. Nothing here does I/O: the agent closes windows and sketches and stores them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import NoModelError
from edge_agent.feeder import SketchFeeder
from edge_agent.model import LoadedModel, softmax
from edge_agent.telemetry import TelemetryWindow, VersionStats, WindowSummary
from qsae_shared.manifest import Manifest
from qsae_shared.sketch import DEFAULT_MAX_BYTES, SketchBuilder

logger = logging.getLogger(__name__)


@dataclass
class Predictions:
    ids: np.ndarray  # (N,) int64, pass them back to feedback() with the true labels
    classes: np.ndarray  # (N,) int64 predicted class
    confidence: np.ndarray  # (N,) float32 max softmax probability
    probs: np.ndarray  # (N, K) float32
    version: str  # model version that made the predictions
    latency_ms: float  # model time of this call


def prepare_input(images: np.ndarray, manifest: Manifest, preprocessed: bool = False) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) images (uint8 0..255 or floats in [0, 1]) -> the normalized
    (N, 1, H, W) float32 input the manifest's preprocessing describes."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (N, H, W) or (N, 1, H, W), got {np.shape(images)}")
    spec = manifest.preprocessing
    if (x.shape[2], x.shape[3]) != (spec.get("height", x.shape[2]), spec.get("width", x.shape[3])):
        raise ValueError(f"images are {x.shape[2]}x{x.shape[3]}, the model expects "
                         f"{spec.get('height')}x{spec.get('width')}")
    if preprocessed:
        return np.ascontiguousarray(x, dtype=np.float32)
    xf = x.astype(np.float32)
    if x.dtype == np.uint8:
        xf *= np.float32(spec.get("scale", 1 / 255))
    return ((xf - np.float32(spec.get("mean", 0.0))) / np.float32(spec.get("std", 1.0))).astype(np.float32)


class _Ring:
    """Fixed-size memory indexed by prediction id (slot = id % capacity)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ids = np.full(capacity, -1, np.int64)

    def slots(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slots, mask of ids still held)."""
        s = ids % self.capacity
        return s, self.ids[s] == ids


class Runtime:
    def __init__(self, device_id: str, base_model: str, *, sketch_max_bytes: int = DEFAULT_MAX_BYTES,
                 recent_inputs: int = 256, pending_labels: int = 100_000, stats_window: int = 2000,
                 sketch_in_background: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.device_id = device_id
        self.base_model = base_model
        self.sketch_max_bytes = sketch_max_bytes  # cap of one sketch upload
        self.stats_window = stats_window  # predictions per version the sliding accuracies cover
        # feed the sketch on a background thread (predict returns after the model) or inline
        self._feeder = SketchFeeder(name=f"sketch-{device_id}") if sketch_in_background else None
        self.clock = clock
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._next_id = 0
        self._versions: list[str] = []  # index -> version, for the pending ring
        self._pending = _Ring(pending_labels)
        self._pending_pred = np.zeros(pending_labels, np.int16)
        self._pending_ver = np.zeros(pending_labels, np.int32)
        self._recent = _Ring(recent_inputs)
        self._recent_x: np.ndarray | None = None  # (R, 1, H, W) float32, allocated on first use
        self._recent_y = np.full(recent_inputs, -1, np.int64)
        self._stats: dict[str, VersionStats] = {}
        self._window = TelemetryWindow(clock(), None)
        self._builder: SketchBuilder | None = None
        self._sketch_started = clock()

    # ----- what the application calls -----

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    @property
    def version(self) -> str | None:
        m = self._model
        return m.version if m else None

    def predict(self, images: np.ndarray, preprocessed: bool = False) -> Predictions:
        """Classify a batch with the deployed model; see `prepare_input` for accepted inputs."""
        model = self._model
        if model is None:
            raise NoModelError("no model is installed yet: the agent installs one after it syncs with the "
                               "control plane (`qsae-agent status` shows what is pending)")
        x = prepare_input(images, model.manifest, preprocessed)  # (N, 1, H, W)
        t0 = time.perf_counter()
        out = model.run(x)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        probs = softmax(out.logits.astype(np.float32))  # (N, K)
        classes = probs.argmax(axis=1)
        conf = probs.max(axis=1)
        expected = model.estimator.per_prediction(conf)  # (N,)
        now = self.clock()
        with self._lock:
            n = len(x)
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._next_id += n
            if self._model is not model:  # swapped while we ran: still answer, do not mix windows
                return Predictions(ids, classes, conf, probs, model.version, latency_ms)
            self._window.add_predictions(conf, expected, latency_ms)
            self._stats_for(model.version).add_predictions(expected)
            assert self._builder is not None
            if self._feeder is not None:
                self._feeder.submit(self._builder, out.stem, probs, now)
            else:
                self._builder.update(out.stem, probs, now)
            vi = self._version_index(model.version)
            s = ids % self._pending.capacity
            self._pending.ids[s] = ids
            self._pending_pred[s] = classes
            self._pending_ver[s] = vi
            keep = slice(max(0, n - self._recent.capacity), n)
            if self._recent_x is None:
                self._recent_x = np.zeros((self._recent.capacity, *x.shape[1:]), np.float32)
            r = ids[keep] % self._recent.capacity
            self._recent.ids[r] = ids[keep]
            self._recent_x[r] = x[keep]
            self._recent_y[r] = -1
        return Predictions(ids, classes, conf, probs, model.version, latency_ms)

    def feedback(self, ids: np.ndarray, labels: np.ndarray) -> int:
        """True labels for earlier predictions (any delay, as long as the prediction is still
        remembered); returns how many were matched. Each prediction counts once."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if ids.shape != labels.shape:
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
        with self._lock:
            s, held = self._pending.slots(ids)
            s, ids_h, labels_h = s[held], ids[held], labels[held]
            hits = self._pending_pred[s] == labels_h
            vers = self._pending_ver[s]
            self._pending.ids[s] = -1
            self._window.add_labels(len(s), int(hits.sum()))
            for vi in np.unique(vers):
                self._stats_for(self._versions[vi]).add_labels(hits[vers == vi])
            r, in_recent = self._recent.slots(ids_h)
            self._recent_y[r[in_recent]] = labels_h[in_recent]
            return len(s)

    # ----- what the agent calls -----

    def swap(self, model: LoadedModel | None) -> tuple[WindowSummary | None, SketchBuilder | None]:
        """Serve `model` from now on. Returns the closed telemetry window (None when it held
        nothing) and the old sketch builder (None when empty) so the agent can store them."""
        now = self.clock()
        with self._lock:
            window, old = self._close_window(now), self._builder
            self._model = model
            self._window = TelemetryWindow(now, model.version if model else None)
            self._builder = self._new_builder(model)
            self._sketch_started = now
        builder = self._settled(old)
        logger.info("device_id=%s model_version=%s serving", self.device_id, model.version if model else None)
        return window, builder

    def close_window(self) -> WindowSummary | None:
        """End the telemetry window (None when it saw neither inferences nor labels)."""
        now = self.clock()
        with self._lock:
            window = self._close_window(now)
            self._window = TelemetryWindow(now, self.version)
            return window

    def take_sketch(self) -> SketchBuilder | None:
        """Hand over the sketch builder of the current window and start a new one (None if empty)."""
        with self._lock:
            old = self._builder
            self._builder = self._new_builder(self._model)
            self._sketch_started = self.clock()
        return self._settled(old)

    def open_sketch(self) -> SketchBuilder | None:
        """The sketch builder of the open window, up to date (for inspection; do not emit it)."""
        b = self._builder
        return self._settled(b) if b is not None else None

    @property
    def sketch_inferences(self) -> int:
        if self._feeder is not None:  # count what predict() submitted, not only what the feeder applied
            self._feeder.barrier()
        b = self._builder
        return b.inference_count if b else 0

    @property
    def sketch_started(self) -> float:
        return self._sketch_started

    def recent(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs held for shadow evaluation: ((R, 1, H, W) float32, (R,) labels or -1)."""
        with self._lock:
            held = self._recent.ids >= 0
            if self._recent_x is None or not held.any():
                return np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64)
            order = np.argsort(self._recent.ids[held])
            return self._recent_x[held][order].copy(), self._recent_y[held][order].copy()

    def stats(self, version: str) -> VersionStats:
        with self._lock:
            return self._stats_for(version)

    # ----- internals (hold the lock) -----

    def _stats_for(self, version: str) -> VersionStats:
        if version not in self._stats:
            if len(self._stats) >= 8:  # forget the oldest versions
                self._stats.pop(next(iter(self._stats)))
            self._stats[version] = VersionStats(self.stats_window)
        return self._stats[version]

    def _version_index(self, version: str) -> int:
        if not self._versions or self._versions[-1] != version:
            if version in self._versions:
                return self._versions.index(version)
            self._versions.append(version)
        return len(self._versions) - 1

    def _close_window(self, now: float) -> WindowSummary | None:
        w = self._window
        if w.count == 0 and w.labelled == 0:
            return None
        return w.summary(now)

    def _settled(self, builder: SketchBuilder | None) -> SketchBuilder | None:
        """The builder once every update queued for it is applied (None when it saw nothing)."""
        if self._feeder is not None:
            self._feeder.barrier()
        return builder if builder is not None and builder.inference_count > 0 else None

    def close(self) -> None:
        if self._feeder is not None:
            self._feeder.close()

    def _new_builder(self, model: LoadedModel | None) -> SketchBuilder | None:
        if model is None:
            return None
        return SketchBuilder(self.device_id, self.base_model, np.asarray(model.manifest.hist_edges, np.float32),
                             max_bytes=self.sketch_max_bytes, seed=self._next_id,
                             deployed_version=model.version)
