"""Installed model versions and the `current` pointer, A/B style.

    models/<version_id>/manifest.json   the signed manifest, as received
    models/<version_id>/files/          the downloaded files, verified against the manifest
    models/<version_id>/runtime/        what `qsae_shared.artifact.materialize` unpacked
    models/.staging-<version_id>/       a download in progress (renamed into place when complete)
    pointer.json                        {"current", "last_known_good", "probation"}, replaced atomically
    blocked.json                        versions the device refused, with the reason

Switching models is one atomic replace of pointer.json: after a crash the device runs either the
old or the new version, never a half-installed one.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write, atomic_write_json, fsync_dir, read_json
from qsae_shared.artifact import materialize
from qsae_shared.manifest import Manifest

logger = logging.getLogger(__name__)

POINTER = "pointer.json"
BLOCKED = "blocked.json"


@dataclass
class Pointer:
    current: str | None = None  # version serving now
    last_known_good: str | None = None  # version to roll back to (passed its probation)
    probation: dict[str, Any] | None = None  # set while `current` is being watched after a swap
    reference: str | None = None  # the base model's version: what shadow evaluation compares against

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current, "last_known_good": self.last_known_good, "probation": self.probation,
                "reference": self.reference}


@dataclass
class Blocked:
    reason: str
    final: bool  # False while install attempts remain
    attempts: int = 0
    manifest_digest: str | None = None  # blocks only this manifest; None blocks the version
    extra: dict[str, Any] = field(default_factory=dict)


class ModelStore:
    def __init__(self, state_dir: Path, readonly: bool = False) -> None:
        self.root = state_dir / "models"
        self.pointer_path = state_dir / POINTER
        self.blocked_path = state_dir / BLOCKED
        if readonly:  # e.g. `qsae-agent status` while the daemon runs: touch nothing
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".staging-*"):  # a download a crash interrupted
            shutil.rmtree(stale, ignore_errors=True)

    # ----- pointer -----

    def pointer(self) -> Pointer:
        doc = read_json(self.pointer_path, {}) or {}
        return Pointer(doc.get("current"), doc.get("last_known_good"), doc.get("probation"), doc.get("reference"))

    def set_pointer(self, pointer: Pointer) -> None:
        atomic_write_json(self.pointer_path, pointer.to_dict())

    # ----- blocked versions -----

    def blocked(self) -> dict[str, Blocked]:
        doc = read_json(self.blocked_path, {}) or {}
        return {k: Blocked(**v) for k, v in doc.items()}

    def block(self, version_id: str, entry: Blocked) -> None:
        doc = {k: vars(v) for k, v in self.blocked().items()}
        doc[version_id] = vars(entry)
        atomic_write_json(self.blocked_path, doc)

    def unblock(self, version_id: str) -> None:
        doc = {k: vars(v) for k, v in self.blocked().items() if k != version_id}
        atomic_write_json(self.blocked_path, doc)

    # ----- versions -----

    def version_dir(self, version_id: str) -> Path:
        if not version_id or "/" in version_id or version_id.startswith("."):
            raise ValueError(f"unsafe version id {version_id!r}")
        return self.root / version_id

    def staging_dir(self, version_id: str) -> Path:
        d = self.root / f".staging-{self.version_dir(version_id).name}"
        shutil.rmtree(d, ignore_errors=True)
        (d / "files").mkdir(parents=True)
        return d

    def commit(self, version_id: str, staging: Path, manifest_json: bytes) -> Path:
        """Move a verified download into place (replacing an older copy of the same version)."""
        atomic_write(staging / "manifest.json", manifest_json)
        final = self.version_dir(version_id)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(self.root)
        return final

    def has(self, version_id: str) -> bool:
        return (self.version_dir(version_id) / "manifest.json").is_file()

    def manifest(self, version_id: str) -> Manifest:
        return Manifest.from_json((self.version_dir(version_id) / "manifest.json").read_bytes())

    def materialize(self, version_id: str, manifest: Manifest | None = None) -> Path:
        """Verify the stored files against the manifest (sizes, sha256) and unpack the runnable
        ONNX model; raises `qsae_shared.errors.ArtifactError` when anything disagrees."""
        d = self.version_dir(version_id)
        manifest = manifest or self.manifest(version_id)
        return materialize(manifest, d / "files", d / "runtime")

    def prune(self, keep: set[str]) -> None:
        """Delete installed versions other than `keep` (the current, the last known good, the reference)."""
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
                logger.info("model_version=%s removed from disk", d.name)

    def installed(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
