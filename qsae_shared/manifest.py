"""The artifact manifest: everything a device needs to know about a model version it pulls.

A manifest is a JSON document. Its signature covers the canonical JSON (sorted keys, no spaces,
UTF-8) of every field except `signature`. Files are content-addressed by sha256 and served by the
control plane at /api/v1/artifacts/{sha256}. See docs/wire-formats.md.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from qsae_shared.canonical import SignedDocument
from qsae_shared.errors import SizeLimitError, WireFormatError

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 1024 * 1024
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class FileEntry:
    name: str  # file name inside the version, e.g. "model.onnx"
    role: str  # "graph", "weights", "mask", ...
    size: int  # bytes
    sha256: str  # lowercase hex; also the address the file is served at


@dataclass(frozen=True)
class ConfidenceProfile:
    """Label-free accuracy estimate: accuracy of the model per output-confidence bin, measured on
    labelled held-out training images when the version was built."""

    bin_edges: list[float]  # (B + 1,) over [0, 1]
    accuracy: list[float]  # (B,) accuracy of predictions whose confidence falls in each bin
    reference_hist: list[float]  # (B,) share of predictions per bin on the calibration data


@dataclass(frozen=True)
class PolicyFloors:
    shadow_agreement_min: float = 0.9  # agreement with the current model needed to switch
    rollback_accuracy_drop_pp: float = 3.0  # roll back if accuracy falls this far after a swap
    rollback_window: int = 500  # inferences observed after a swap before judging it


@dataclass(frozen=True)
class Manifest(SignedDocument):
    version_id: str  # unique id of this model version
    base_model: str  # registered model name of the dense base
    base_version: str  # version of the dense base this was pruned from
    device_id: str | None  # device it was pruned for; None for fleet-wide versions
    created_at: float  # unix seconds
    preprocessing: dict[str, Any]  # qsae_shared.data.preprocessing_spec()
    input_name: str  # ONNX input name
    output_name: str  # ONNX logits output name
    stem_output_name: str  # ONNX extra output carrying the stem's activations
    stem_shape: list[int]  # (C, H, W) of the stem output
    hist_edges: list[list[float]]  # (C, B + 1) bin edges for the sketch histograms
    confidence_profile: ConfidenceProfile
    floors: PolicyFloors
    method: dict[str, Any]  # criterion, recovery, policy, and their parameters
    metrics: dict[str, float]  # kl, compression_ratio, params_kept, macs, ...
    files: list[FileEntry]
    key_id: str = ""
    signature: str = ""  # base64 Ed25519 over signed_bytes()
    schema_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, role: str) -> FileEntry:
        for f in self.files:
            if f.role == role:
                return f
        raise WireFormatError(f"manifest {self.version_id} has no file with role {role!r}")

    @property
    def download_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_json(cls, data: bytes | str, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
        if len(data) > max_bytes:
            raise SizeLimitError(f"manifest of {len(data)} bytes is over the cap of {max_bytes}")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WireFormatError(f"manifest is not JSON: {exc}") from exc
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Manifest:
        if not isinstance(doc, dict):
            raise WireFormatError("manifest must be a JSON object")
        version = doc.get("schema_version")
        if version != MANIFEST_VERSION:
            raise WireFormatError(f"unknown manifest schema_version {version!r}; "
                                  f"this build reads {MANIFEST_VERSION}")
        known = {f.name for f in fields(cls)}
        missing = sorted(known - set(doc) - {"key_id", "signature", "extra"})
        if missing:
            raise WireFormatError(f"manifest lacks {', '.join(missing)}")
        unknown = sorted(set(doc) - known)
        if unknown:
            raise WireFormatError(f"manifest has unknown fields {', '.join(unknown)}")
        try:
            d = dict(doc)
            d["confidence_profile"] = ConfidenceProfile(**d["confidence_profile"])
            d["floors"] = PolicyFloors(**d["floors"])
            d["files"] = [FileEntry(**f) for f in d["files"]]
            m = cls(**d)
        except TypeError as exc:
            raise WireFormatError(f"manifest field has the wrong shape: {exc}") from exc
        _validate(m)
        return m


def _finite(x: Any, what: str) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise WireFormatError(f"manifest `{what}` must be a finite number, got {x!r}")


def _validate(m: Manifest) -> None:
    for name in ("version_id", "base_model", "base_version", "input_name", "output_name",
                 "stem_output_name"):
        v = getattr(m, name)
        if not isinstance(v, str) or not v:
            raise WireFormatError(f"manifest `{name}` must be a non-empty string")
    _finite(m.created_at, "created_at")
    if len(m.stem_shape) != 3 or any(not isinstance(v, int) or v <= 0 for v in m.stem_shape):
        raise WireFormatError("manifest `stem_shape` must be three positive integers (C, H, W)")
    if len(m.hist_edges) != m.stem_shape[0]:
        raise WireFormatError(f"manifest `hist_edges` must have one row per stem channel "
                              f"({m.stem_shape[0]}), has {len(m.hist_edges)}")
    for row in m.hist_edges:
        for v in row:
            _finite(v, "hist_edges")
        if len(row) < 2 or any(b <= a for a, b in itertools.pairwise(row)):
            raise WireFormatError("manifest `hist_edges` rows must increase")
    cp = m.confidence_profile
    if len(cp.bin_edges) != len(cp.accuracy) + 1 or len(cp.reference_hist) != len(cp.accuracy):
        raise WireFormatError("confidence profile: need B + 1 edges, B accuracies, B shares")
    for v in [*cp.bin_edges, *cp.accuracy, *cp.reference_hist]:
        _finite(v, "confidence_profile")
    for name, v in m.metrics.items():
        _finite(v, f"metrics.{name}")
    for floor in (m.floors.shadow_agreement_min, m.floors.rollback_accuracy_drop_pp):
        _finite(floor, "floors")
    if not m.files:
        raise WireFormatError("manifest lists no files")
    for f in m.files:
        if len(f.sha256) != 64 or not set(f.sha256) <= _HEX:
            raise WireFormatError(f"file {f.name!r}: sha256 must be 64 lowercase hex characters")
        if not isinstance(f.size, int) or f.size < 0:
            raise WireFormatError(f"file {f.name!r}: size must be a non-negative integer")
        if not f.name or "/" in f.name or f.name.startswith("."):
            raise WireFormatError(f"file name {f.name!r} must be a plain file name")
