"""Activation sketches: what a device tells the server about its data, without the data.

A sketch summarizes a window of inferences by the stem's output (the first conv block, which is
the same in the dense and every pruned model):
- an aligned reservoir sample of whole stem outputs, int8 with per-channel scales;
- per-channel count / mean / variance;
- per-channel histograms over fixed bin edges (from the manifest);
- a histogram of output confidence (max softmax probability) over [0, 1].

Wire format v1 (little-endian): b"QSKT", u16 version, u32 header length, a UTF-8 JSON header,
then the arrays in `_ARRAYS` order, each C-contiguous with the shape the header implies.
An upload is bounded by `max_bytes` whatever the number of inferences: the builder sizes its
reservoir so that the serialized sketch fits. See docs/wire-formats.md.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qsae_shared.errors import SizeLimitError, WireFormatError

MAGIC = b"QSKT"
VERSION = 1
DEFAULT_MAX_BYTES = 256 * 1024
CONFIDENCE_BINS = 20
_PREFIX = struct.Struct("<4sHI")
_HEADER_SLACK = 1024  # bytes reserved for the JSON header when sizing the reservoir


@dataclass(frozen=True)
class SketchLimits:
    """Caps a parser enforces before it allocates anything."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_channels: int = 512
    max_spatial: int = 64 * 64
    max_bins: int = 256
    max_samples: int = 100_000
    max_header_bytes: int = 16 * 1024


@dataclass
class Sketch:
    device_id: str
    seq: int
    window_start: float  # unix seconds
    window_end: float
    inference_count: int  # inferences the window covers (the reservoir is a uniform sample of them)
    base_model: str
    deployed_version: str | None
    samples: np.ndarray  # (n, C, H, W) int8
    scales: np.ndarray  # (C,) float32: sample value = int8 * scale
    channel_count: np.ndarray  # (C,) float64, activations counted per channel
    channel_mean: np.ndarray  # (C,) float64
    channel_var: np.ndarray  # (C,) float64, population variance
    hist_edges: np.ndarray  # (C, B + 1) float32, increasing per channel
    hist_counts: np.ndarray  # (C, B) uint32; values outside the edges land in the end bins
    confidence_hist: np.ndarray  # (CONFIDENCE_BINS,) uint32 over [0, 1]
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, JSON-serializable

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.samples.shape[1:])

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    def samples_float(self) -> np.ndarray:
        """The reservoir dequantized: (n, C, H, W) float32."""
        return self.samples.astype(np.float32) * self.scales[None, :, None, None]

    def to_bytes(self) -> bytes:
        _check_consistent(self)
        header = json.dumps({
            "device_id": self.device_id, "seq": self.seq,
            "window_start": self.window_start, "window_end": self.window_end,
            "inference_count": self.inference_count, "base_model": self.base_model,
            "deployed_version": self.deployed_version,
            "num_samples": self.num_samples, "channels": int(self.samples.shape[1]),
            "height": int(self.samples.shape[2]), "width": int(self.samples.shape[3]),
            "bins": int(self.hist_counts.shape[1]), "confidence_bins": len(self.confidence_hist),
            "extra": self.extra,
        }, separators=(",", ":")).encode()
        parts = [_PREFIX.pack(MAGIC, VERSION, len(header)), header]
        for name, dtype, _ in _ARRAYS:
            parts.append(np.ascontiguousarray(getattr(self, name), dtype=dtype).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, limits: SketchLimits | None = None) -> Sketch:
        return parse_sketch(data, limits)


# (field, dtype, shape from header) in wire order.
_ARRAYS: list[tuple[str, str, Any]] = [
    ("samples", "<i1", lambda h: (h["num_samples"], h["channels"], h["height"], h["width"])),
    ("scales", "<f4", lambda h: (h["channels"],)),
    ("channel_count", "<f8", lambda h: (h["channels"],)),
    ("channel_mean", "<f8", lambda h: (h["channels"],)),
    ("channel_var", "<f8", lambda h: (h["channels"],)),
    ("hist_edges", "<f4", lambda h: (h["channels"], h["bins"] + 1)),
    ("hist_counts", "<u4", lambda h: (h["channels"], h["bins"])),
    ("confidence_hist", "<u4", lambda h: (h["confidence_bins"],)),
]


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise WireFormatError(f"malformed sketch: {msg}")


def _int_field(header: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = header.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise WireFormatError(f"malformed sketch: `{key}` must be an integer")
    _require(lo <= v <= hi, f"`{key}`={v} outside [{lo}, {hi}]")
    return v


def parse_sketch(data: bytes, limits: SketchLimits | None = None) -> Sketch:
    """Parse and validate a sketch; every problem is a `WireFormatError` that names it."""
    lim = limits or SketchLimits()
    if len(data) > lim.max_bytes:
        raise SizeLimitError(f"sketch is {len(data)} bytes, over the cap of {lim.max_bytes}")
    _require(len(data) >= _PREFIX.size, f"only {len(data)} bytes, shorter than the prefix")
    magic, version, header_len = _PREFIX.unpack_from(data)
    _require(magic == MAGIC, f"bad magic {magic!r}, expected {MAGIC!r}")
    _require(version == VERSION, f"unknown version {version}; this build reads version {VERSION}")
    _require(header_len <= lim.max_header_bytes, f"header of {header_len} bytes is over the cap")
    _require(len(data) >= _PREFIX.size + header_len, "truncated inside the header")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireFormatError(f"malformed sketch: header is not JSON ({exc})") from exc
    _require(isinstance(header, dict), "header must be a JSON object")
    _int_field(header, "num_samples", 0, lim.max_samples)
    _int_field(header, "channels", 1, lim.max_channels)
    h = _int_field(header, "height", 1, lim.max_spatial)
    w = _int_field(header, "width", 1, lim.max_spatial)
    _require(h * w <= lim.max_spatial, f"spatial size {h}x{w} over the cap of {lim.max_spatial}")
    _int_field(header, "bins", 1, lim.max_bins)
    _int_field(header, "confidence_bins", 1, lim.max_bins)
    seq = _int_field(header, "seq", 0, 2**62)
    count = _int_field(header, "inference_count", 0, 2**62)
    for key in ("device_id", "base_model"):
        _require(isinstance(header.get(key), str) and 0 < len(header[key]) <= 200,
                 f"`{key}` must be a non-empty string")
    _require(header.get("deployed_version") is None or isinstance(header["deployed_version"], str),
             "`deployed_version` must be a string or null")
    for key in ("window_start", "window_end"):
        v = header.get(key)
        _require(isinstance(v, (int, float)) and math.isfinite(v), f"`{key}` must be a finite number")
    _require(header["window_start"] <= header["window_end"], "window ends before it starts")
    _require(isinstance(header.get("extra", {}), dict), "`extra` must be an object")

    arrays: dict[str, np.ndarray] = {}
    offset = _PREFIX.size + header_len
    for name, dtype, shape_of in _ARRAYS:
        shape = shape_of(header)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        _require(offset + nbytes <= len(data),
                 f"truncated: `{name}` needs {nbytes} bytes at offset {offset}, {len(data) - offset} left")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)),
                                     offset=offset).reshape(shape).copy()
        offset += nbytes
    _require(offset == len(data), f"{len(data) - offset} trailing bytes after the last array")
    sketch = Sketch(
        device_id=header["device_id"], seq=seq, window_start=float(header["window_start"]),
        window_end=float(header["window_end"]), inference_count=count,
        base_model=header["base_model"], deployed_version=header.get("deployed_version"),
        extra=header.get("extra", {}), **arrays,
    )
    _check_consistent(sketch)
    return sketch


def _check_consistent(s: Sketch) -> None:
    _require(s.samples.ndim == 4, f"samples must be (n, C, H, W), got shape {s.samples.shape}")
    c = s.samples.shape[1]
    for name in ("scales", "channel_count", "channel_mean", "channel_var"):
        _require(getattr(s, name).shape == (c,), f"`{name}` must have shape ({c},)")
    _require(s.hist_edges.ndim == 2 and s.hist_edges.shape[0] == c, "`hist_edges` must be (C, B+1)")
    _require(s.hist_counts.shape == (c, s.hist_edges.shape[1] - 1), "`hist_counts` must be (C, B)")
    for name in ("scales", "channel_count", "channel_mean", "channel_var", "hist_edges"):
        _require(bool(np.all(np.isfinite(getattr(s, name)))), f"`{name}` holds NaN or Inf")
    _require(bool(np.all(s.scales >= 0)), "`scales` must be non-negative")
    _require(bool(np.all(s.channel_var >= 0)), "`channel_var` must be non-negative")
    _require(bool(np.all(np.diff(s.hist_edges, axis=1) > 0)), "`hist_edges` must increase")
    _require(s.num_samples <= max(s.inference_count, 0) or (s.inference_count == 0 and s.num_samples == 0),
             "more samples than inferences")


def sample_capacity(shape: tuple[int, int, int], bins: int, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """How many stem outputs of `shape` fit in one upload of at most `max_bytes`."""
    c, h, w = shape
    fixed = (_PREFIX.size + _HEADER_SLACK + c * (4 + 8 * 3) + c * (bins + 1) * 4 + c * bins * 4
             + CONFIDENCE_BINS * 4)
    capacity = (max_bytes - fixed) // (c * h * w)
    if capacity < 1:
        raise SizeLimitError(f"a sketch of stem shape {shape} cannot fit in {max_bytes} bytes")
    return int(capacity)


def _quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, H, W) float -> int8 samples with symmetric per-channel scales."""
    if x.shape[0] == 0:
        return x.astype(np.int8), np.zeros(x.shape[1], np.float32)
    amax = np.abs(x).max(axis=(0, 2, 3)).astype(np.float32)
    scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(x / scales[None, :, None, None]), -127, 127).astype(np.int8)
    return q, scales


class SketchBuilder:
    """Streams stem outputs into a sketch with bounded memory (the reservoir, the moments, the
    histograms); `emit` serializes a window and starts the next one."""

    def __init__(self, device_id: str, base_model: str, hist_edges: np.ndarray,
                 max_bytes: int = DEFAULT_MAX_BYTES, seed: int = 0,
                 deployed_version: str | None = None, capacity: int | None = None) -> None:
        self.device_id = device_id
        self.base_model = base_model
        self.deployed_version = deployed_version
        self.hist_edges = np.asarray(hist_edges, dtype=np.float32)
        if self.hist_edges.ndim != 2 or not np.all(np.diff(self.hist_edges, axis=1) > 0):
            raise ValueError("hist_edges must be (C, B+1) and increasing per channel")
        self.max_bytes = max_bytes
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.seq = 0
        self._reset()

    def _reset(self, now: float | None = None) -> None:
        c, b1 = self.hist_edges.shape
        self._reservoir: np.ndarray | None = None  # (capacity, C, H, W) float32
        self._seen = 0
        self._count = np.zeros(c)
        self._mean = np.zeros(c)
        self._m2 = np.zeros(c)
        self._hist = np.zeros((c, b1 - 1), np.int64)
        self._conf = np.zeros(CONFIDENCE_BINS, np.int64)
        self._start = now

    @property
    def inference_count(self) -> int:
        return self._seen

    def update(self, stem_out: np.ndarray, probs: np.ndarray | None = None, now: float = 0.0) -> None:
        """stem_out: (N, C, H, W) float; probs: (N, K) softmax outputs of the deployed model."""
        x = np.asarray(stem_out, dtype=np.float32)
        c = self.hist_edges.shape[0]
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"stem output must be (N, {c}, H, W), got {x.shape}")
        if self._start is None:
            self._start = now
        self._end = now
        n = len(x)
        if self._reservoir is None:
            cap = self.capacity or sample_capacity(x.shape[1:], self.hist_edges.shape[1] - 1,
                                                   self.max_bytes)
            self._reservoir = np.zeros((cap, *x.shape[1:]), np.float32)
        cap = len(self._reservoir)
        for i in range(n):  # Algorithm R; the loop is over images, not pixels
            t = self._seen + i
            if t < cap:
                self._reservoir[t] = x[i]
            else:
                j = int(self.rng.integers(t + 1))
                if j < cap:
                    self._reservoir[j] = x[i]
        self._seen += n
        # Chan's parallel update of per-channel moments.
        flat = x.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64)  # (C, N*H*W)
        nb = flat.shape[1]
        mb, vb = flat.mean(axis=1), flat.var(axis=1)
        tot = self._count + nb
        delta = mb - self._mean
        self._mean = self._mean + delta * nb / tot
        self._m2 = self._m2 + vb * nb + delta**2 * self._count * nb / tot
        self._count = tot
        for ch in range(c):
            edges = self.hist_edges[ch]
            idx = np.clip(np.searchsorted(edges, flat[ch], side="right") - 1, 0, len(edges) - 2)
            self._hist[ch] += np.bincount(idx, minlength=len(edges) - 1)
        if probs is not None:
            conf = np.asarray(probs, dtype=np.float64).max(axis=1)
            idx = np.clip((conf * CONFIDENCE_BINS).astype(int), 0, CONFIDENCE_BINS - 1)
            self._conf += np.bincount(idx, minlength=CONFIDENCE_BINS)

    def build(self) -> Sketch:
        """The current window as a sketch (does not reset)."""
        kept = 0 if self._reservoir is None else min(self._seen, len(self._reservoir))
        res = (self._reservoir[:kept] if self._reservoir is not None
               else np.zeros((0, self.hist_edges.shape[0], 1, 1), np.float32))
        samples, scales = _quantize(res)
        var = np.where(self._count > 0, self._m2 / np.maximum(self._count, 1), 0.0)
        return Sketch(
            device_id=self.device_id, seq=self.seq, window_start=float(self._start or 0.0),
            window_end=float(getattr(self, "_end", self._start or 0.0)), inference_count=self._seen,
            base_model=self.base_model, deployed_version=self.deployed_version,
            samples=samples, scales=scales, channel_count=self._count.copy(),
            channel_mean=self._mean.copy(), channel_var=var, hist_edges=self.hist_edges.copy(),
            hist_counts=self._hist.astype(np.uint32), confidence_hist=self._conf.astype(np.uint32))

    def emit(self) -> bytes:
        """Serialize the window, then start a new one with the next sequence number."""
        data = self.build().to_bytes()
        if len(data) > self.max_bytes:  # capacity was forced larger than the cap allows
            raise SizeLimitError(f"sketch of {len(data)} bytes exceeds the cap of {self.max_bytes}")
        self.seq += 1
        self._reset()
        return data


def merge_sketches(sketches: list[Sketch], max_samples: int, seed: int = 0) -> Sketch:
    """Combine uploads of one device and base model into one sketch whose reservoir is a uniform
    sample of all their inferences (weighted reservoir sampling, Efraimidis-Spirakis): a sample
    of an upload with N inferences and n samples stands for N / n inferences."""
    if not sketches:
        raise ValueError("nothing to merge")
    first = sketches[0]
    for s in sketches[1:]:
        if s.shape != first.shape or not np.array_equal(s.hist_edges, first.hist_edges):
            raise WireFormatError("cannot merge sketches with different stem shapes or bin edges")
        if s.base_model != first.base_model:
            raise WireFormatError("cannot merge sketches of different base models")
    rng = np.random.default_rng(seed)
    keys, refs = [], []
    for si, s in enumerate(sketches):
        if s.num_samples == 0:
            continue
        weight = s.inference_count / s.num_samples
        keys.append(np.log(rng.random(s.num_samples)) / weight)  # log(u) / w: larger is kept
        refs += [(si, j) for j in range(s.num_samples)]
    if keys:
        order = np.argsort(-np.concatenate(keys), kind="stable")[:max_samples]
        chosen = [refs[i] for i in order]
        # each sketch dequantized once (once per chosen sample cost 0.3 s a retrain)
        dequantized = {si: sketches[si].samples_float() for si in {si for si, _ in chosen}}
        floats = np.stack([dequantized[si][j] for si, j in chosen])
    else:
        floats = np.zeros((0, *first.shape), np.float32)
    samples, scales = _quantize(floats)
    count = np.sum([s.channel_count for s in sketches], axis=0)
    safe = np.maximum(count, 1)
    mean = np.sum([s.channel_count * s.channel_mean for s in sketches], axis=0) / safe
    second = np.sum([s.channel_count * (s.channel_var + (s.channel_mean - mean) ** 2)
                     for s in sketches], axis=0) / safe
    last = max(sketches, key=lambda s: (s.window_end, s.seq))
    return replace(
        last, seq=last.seq, window_start=min(s.window_start for s in sketches),
        window_end=max(s.window_end for s in sketches),
        inference_count=sum(s.inference_count for s in sketches),
        samples=samples, scales=scales, channel_count=count, channel_mean=mean,
        channel_var=np.maximum(second, 0.0),
        hist_counts=np.sum([s.hist_counts.astype(np.int64) for s in sketches], axis=0).astype(np.uint32),
        confidence_hist=np.sum([s.confidence_hist.astype(np.int64) for s in sketches],
                               axis=0).astype(np.uint32),
        extra={"merged_from": [s.seq for s in sketches]})


def histogram_drift(reference: np.ndarray, current: np.ndarray) -> float:
    """Mean over channels of the Jensen-Shannon divergence (base 2, in [0, 1]) between two
    (C, B) histogram stacks; 0 means the same distribution of stem activations."""
    p = np.asarray(reference, dtype=np.float64) + 1e-9
    q = np.asarray(current, dtype=np.float64) + 1e-9
    if p.shape != q.shape:
        raise ValueError(f"histogram shapes differ: {p.shape} vs {q.shape}")
    p /= p.sum(axis=-1, keepdims=True)
    q /= q.sum(axis=-1, keepdims=True)
    m = (p + q) / 2
    js = 0.5 * (p * np.log2(p / m)).sum(-1) + 0.5 * (q * np.log2(q / m)).sum(-1)
    return float(np.clip(js, 0.0, 1.0).mean())


def without_samples(s: Sketch) -> Sketch:
    """The sketch minus its reservoir: what drift and window selection read, at a few KB."""
    return replace(s, samples=np.empty((s.num_samples, 0, 0, 0), np.int8))


def select_recent(sketches: list[Sketch], calibration_size: int, drift_threshold: float) -> list[Sketch]:
    """Newest first, the uploads that look like the newest one (histogram drift under the
    threshold), until they hold `calibration_size` samples: a retrain calibrates on the device's
    current data, not on a mix of what it saw before and after a drift."""
    ordered = sorted(sketches, key=lambda s: (s.window_end, s.seq), reverse=True)
    chosen: list[Sketch] = []
    samples = 0
    for s in ordered:
        if chosen and histogram_drift(ordered[0].hist_counts, s.hist_counts) > drift_threshold:
            break
        chosen.append(s)
        samples += s.num_samples
        if samples >= calibration_size:
            break
    return chosen
