"""Device distributions: per-device class mixes and corruptions that change over time.

A `DeviceProfile` is a list of `Phase`s, each lasting a number of inferences, each with its class
mix and its corruptions. `DeviceStream` draws images in stream order from one split (train for
calibration streams, test for evaluation), deterministic by seed. The benchmarks, the simulator
and the demo all draw through here, so they see the same data.

Images are (N, 28, 28) float32 in [0, 1]; `qsae_shared.data.preprocess` makes network input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qsae_shared.data import CLASS_NAMES, NUM_CLASSES, Split, load_split
from qsae_shared.errors import ScenarioError

CORRUPTIONS = ("noise", "contrast", "brightness", "blur", "rotation")


@dataclass(frozen=True)
class Corruption:
    kind: str  # one of CORRUPTIONS
    severity: float  # noise: std; contrast: factor (<1 flattens); brightness: offset; blur: sigma px; rotation: max degrees

    def __post_init__(self) -> None:
        if self.kind not in CORRUPTIONS:
            raise ScenarioError(f"unknown corruption {self.kind!r}; known: {', '.join(CORRUPTIONS)}")
        if not np.isfinite(self.severity):
            raise ScenarioError(f"corruption {self.kind} has a non-finite severity")

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """x: (N, H, W) in [0, 1] -> corrupted copy in [0, 1]."""
        if self.kind == "noise":
            y = x + rng.normal(0.0, self.severity, size=x.shape).astype(np.float32)
        elif self.kind == "contrast":
            mean = x.mean(axis=(1, 2), keepdims=True)
            y = mean + (x - mean) * self.severity
        elif self.kind == "brightness":
            y = x + self.severity
        elif self.kind == "blur":
            y = _gaussian_blur(x, self.severity)
        else:
            y = _rotate(x, rng.uniform(-self.severity, self.severity, size=len(x)))
        return np.clip(y, 0.0, 1.0).astype(np.float32)

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.severity:g}"


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return x
    radius = max(1, round(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        out = np.zeros_like(x)
        for i, w in enumerate(taps):
            out += w * np.take(padded, np.arange(i, i + x.shape[axis]), axis=axis)
        x = out
    return x


def _rotate(x: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Bilinear rotation of each image about its centre; outside pixels are 0 (background)."""
    n, h, w = x.shape
    theta = np.deg2rad(degrees)[:, None, None]  # (N, 1, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = yy - cy, xx - cx
    src_y = cy + np.cos(theta) * dy - np.sin(theta) * dx  # (N, H, W)
    src_x = cx + np.sin(theta) * dy + np.cos(theta) * dx
    y0, x0 = np.floor(src_y).astype(int), np.floor(src_x).astype(int)
    fy, fx = src_y - y0, src_x - x0
    padded = np.pad(x, ((0, 0), (1, 2), (1, 2)))
    idx = np.arange(n)[:, None, None]

    def at(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        return padded[idx, np.clip(yi + 1, 0, h + 2), np.clip(xi + 1, 0, w + 2)]

    return ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
            + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1)).astype(np.float32)


@dataclass(frozen=True)
class Phase:
    duration: int  # inferences this phase lasts on the device
    class_weights: tuple[float, ...] = (1.0,) * NUM_CLASSES  # (10,), normalized on use
    corruptions: tuple[Corruption, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        w = np.asarray(self.class_weights, dtype=float)
        if self.duration <= 0:
            raise ScenarioError(f"phase {self.name!r}: duration must be positive")
        if w.shape != (NUM_CLASSES,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise ScenarioError(f"phase {self.name!r}: class weights must be {NUM_CLASSES} "
                                "non-negative numbers with a positive sum")

    @property
    def probabilities(self) -> np.ndarray:
        w = np.asarray(self.class_weights, dtype=float)
        return w / w.sum()

    def describe(self) -> str:
        p = self.probabilities
        classes = "all" if np.allclose(p, 0.1) else "+".join(
            CLASS_NAMES[i] for i in np.flatnonzero(p > 0))
        corr = ",".join(c.label for c in self.corruptions) or "clean"
        return self.name or f"{classes}/{corr}"


def _seed_of(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sample(phase: Phase, n: int, split: Split, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images drawn through one phase: ((n, 28, 28) float32 in [0, 1], (n,) labels)."""
    classes = rng.choice(NUM_CLASSES, size=n, p=phase.probabilities)
    by_class = _class_index(split)
    idx = np.array([by_class[c][rng.integers(len(by_class[c]))] for c in classes], dtype=np.int64)
    return _through(phase, split, idx, rng)


def sample_evenly(phase: Phase, n: int, split: Split, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images through one phase, for evaluation: each class gets its share of n (rounded), and
    within a class every image is used once before any is used again. Drawing n of n with
    replacement, as `sample` does, skips 37 % of the images and scores a quarter two or more times:
    the same expectation with about twice the variance. Shuffled; same return as `sample`."""
    share = n * phase.probabilities
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share, kind="stable")[: n - int(counts.sum())]] += 1  # largest remainders
    by_class = _class_index(split)
    parts = []
    for c in np.flatnonzero(counts):
        pool = by_class[c]
        rounds = -(-int(counts[c]) // len(pool))
        parts.append(np.concatenate([rng.permutation(pool) for _ in range(rounds)])[: counts[c]])
    return _through(phase, split, rng.permutation(np.concatenate(parts)), rng)


def _through(phase: Phase, split: Split, idx: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The split's images at idx, corrupted as the phase says."""
    x = split.images[idx].astype(np.float32) / 255.0
    for corruption in phase.corruptions:
        x = corruption.apply(x, rng)
    return x, split.labels[idx].copy()


_INDEX_CACHE: dict[int, list[np.ndarray]] = {}


def _class_index(split: Split) -> list[np.ndarray]:
    key = id(split.labels)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = [np.flatnonzero(split.labels == c) for c in range(NUM_CLASSES)]
    return _INDEX_CACHE[key]


@dataclass(frozen=True)
class DeviceProfile:
    device_id: str
    phases: tuple[Phase, ...]
    seed: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)  # cohort and other operator labels

    def __post_init__(self) -> None:
        if not self.phases:
            raise ScenarioError(f"device {self.device_id!r} has no phases")

    @property
    def total_inferences(self) -> int:
        return sum(p.duration for p in self.phases)

    def phase_index_at(self, t: int) -> int:
        """The phase in force at inference number t (the last phase lasts forever)."""
        for i, p in enumerate(self.phases):
            if t < p.duration:
                return i
            t -= p.duration
        return len(self.phases) - 1

    def stream(self, split: str = "test", role: str = "stream") -> DeviceStream:
        return DeviceStream(self, split, role)


@dataclass
class StreamBatch:
    images: np.ndarray  # (n, 28, 28) float32 in [0, 1]
    labels: np.ndarray  # (n,) int64
    phase_index: np.ndarray  # (n,) int64, which phase each image came from
    t_start: int  # inference number of the first image


class DeviceStream:
    """Images in stream order for one device, deterministic by (seed, device_id, split, role)."""

    def __init__(self, profile: DeviceProfile, split: str = "test", role: str = "stream") -> None:
        self.profile = profile
        self.split = load_split(split)
        self.rng = np.random.default_rng(_seed_of(profile.seed, profile.device_id, split, role))
        self.t = 0

    def next_batch(self, n: int) -> StreamBatch:
        phases = np.array([self.profile.phase_index_at(self.t + i) for i in range(n)])
        xs, ys = [], []
        for pi in np.unique(phases):
            x, y = sample(self.profile.phases[pi], int((phases == pi).sum()), self.split, self.rng)
            xs.append(x)
            ys.append(y)
        batch = StreamBatch(np.concatenate(xs), np.concatenate(ys), phases, self.t)
        self.t += n
        return batch


def phase_from_dict(d: Mapping[str, Any]) -> Phase:
    """{duration, classes?: [names or ids] | {name: weight}, corruptions?: [{kind, severity}], name?}."""
    try:
        weights = _class_weights(d.get("classes"))
        corruptions = tuple(Corruption(str(c["kind"]), float(c["severity"]))
                            for c in d.get("corruptions", []) or [])
        return Phase(int(d["duration"]), weights, corruptions, str(d.get("name", "")))
    except (KeyError, TypeError) as exc:
        raise ScenarioError(f"invalid phase {dict(d)!r}: {exc}") from exc


def _class_weights(spec: Any) -> tuple[float, ...]:
    if spec is None or spec == "all":
        return (1.0,) * NUM_CLASSES
    w = [0.0] * NUM_CLASSES
    items = spec.items() if isinstance(spec, Mapping) else ((c, 1.0) for c in spec)
    for cls, weight in items:
        w[_class_id(cls)] = float(weight)
    return tuple(w)


def _class_id(cls: Any) -> int:
    if isinstance(cls, int) and 0 <= cls < NUM_CLASSES:
        return cls
    if isinstance(cls, str) and cls in CLASS_NAMES:
        return CLASS_NAMES.index(cls)
    raise ScenarioError(f"unknown class {cls!r}; classes are 0-9 or {', '.join(CLASS_NAMES)}")


def profiles_from_scenario(doc: Mapping[str, Any]) -> list[DeviceProfile]:
    """A scenario document: {seed?, devices: [{id, count?, labels?, phases: [...]}]}.

    `count: N` replicates a device entry as id-0 .. id-(N-1), each with its own random stream.
    """
    seed = int(doc.get("seed", 0))
    devices = doc.get("devices")
    if not isinstance(devices, Sequence) or not devices:
        raise ScenarioError("a scenario needs a non-empty `devices` list")
    profiles: list[DeviceProfile] = []
    for entry in devices:
        if "id" not in entry or "phases" not in entry:
            raise ScenarioError(f"device entry {entry!r} needs `id` and `phases`")
        phases = tuple(phase_from_dict(p) for p in entry["phases"])
        labels = {str(k): str(v) for k, v in (entry.get("labels") or {}).items()}
        count = int(entry.get("count", 1))
        ids = [str(entry["id"])] if count == 1 else [f"{entry['id']}-{i}" for i in range(count)]
        profiles += [DeviceProfile(i, phases, seed, labels) for i in ids]
    names = [p.device_id for p in profiles]
    if len(set(names)) != len(names):
        raise ScenarioError("device ids in a scenario must be unique")
    return profiles
