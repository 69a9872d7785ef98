"""Model versions: a signed manifest whose files are all in the artifact store, plus its MLflow
name/version. Registering the same manifest twice is harmless; a different manifest under an
existing version id is a conflict."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.artifacts import ArtifactStore
from control_plane.db.models import Device, ModelVersion
from control_plane.errors import ConflictError, NotFoundError, ValidationFailedError
from control_plane.services import audit
from qsae_shared.errors import SignatureError, WireFormatError
from qsae_shared.manifest import Manifest
from qsae_shared.signing import SigningKey, verify_manifest

logger = logging.getLogger(__name__)
VERSION_STATES = ("candidate", "approved", "rejected", "retired")


def parse_manifest(manifest: Manifest | bytes | str | dict[str, Any]) -> Manifest:
    try:
        if isinstance(manifest, Manifest):
            return Manifest.from_dict(manifest.to_dict())  # re-validate
        if isinstance(manifest, dict):
            return Manifest.from_dict(manifest)
        return Manifest.from_json(manifest)
    except WireFormatError as exc:
        raise ValidationFailedError(f"invalid manifest: {exc}") from exc


def sign_if_needed(m: Manifest, signer: SigningKey) -> Manifest:
    """Sign an unsigned manifest with the server key; check a signed one against it."""
    if not m.signature:
        return signer.sign_manifest(m)
    try:
        verify_manifest(m, {signer.key_id: signer.public_key_b64})
    except SignatureError as exc:
        raise ValidationFailedError(f"{exc}; leave `signature` empty and the control plane signs it") from exc
    return m


def get_version(s: Session, version_id: str) -> ModelVersion:
    v = s.get(ModelVersion, version_id)
    if v is None:
        raise NotFoundError(f"model version {version_id} does not exist")
    return v


def register_model_version(s: Session, manifest: Manifest | bytes | str | dict[str, Any], *,
                           store: ArtifactStore, signer: SigningKey, mlflow_name: str | None = None,
                           mlflow_version: str | None = None, mlflow_run_id: str | None = None,
                           mlflow_experiment_id: str | None = None, status: str = "candidate", job_id: int | None = None,
                           actor: str = "system:dispatcher") -> ModelVersion:
    """Record a deployable version. Every file the manifest lists must already be in `store`
    with its size; the manifest is signed here when it comes unsigned."""
    if status not in VERSION_STATES:
        raise ValidationFailedError(f"status must be one of {', '.join(VERSION_STATES)}")
    m = sign_if_needed(parse_manifest(manifest), signer)
    for f in m.files:
        if not store.exists(f.sha256):
            raise ValidationFailedError(f"file {f.name} ({f.sha256}) is not in the artifact store; "
                                        "store it first (put_artifact)")
        if store.size(f.sha256) != f.size:
            raise ValidationFailedError(f"file {f.name}: the manifest says {f.size} bytes, the stored "
                                        f"artifact has {store.size(f.sha256)}")
    if m.device_id is not None and s.get(Device, m.device_id) is None:
        raise NotFoundError(f"manifest names device {m.device_id}, which does not exist")
    doc = m.to_json().decode()
    sha = hashlib.sha256(doc.encode()).hexdigest()
    existing = s.get(ModelVersion, m.version_id)
    if existing is not None:
        if existing.manifest_sha256 == sha or _same_unsigned(existing.manifest, m):
            return existing
        raise ConflictError(f"version {m.version_id} exists with a different manifest; use a new version_id")
    metrics = dict(m.metrics)
    v = ModelVersion(id=m.version_id, device_id=m.device_id, base_model=m.base_model,
                     base_version=m.base_version, mlflow_name=mlflow_name,
                     mlflow_version=None if mlflow_version is None else str(mlflow_version),
                     mlflow_run_id=mlflow_run_id, mlflow_experiment_id=mlflow_experiment_id, manifest=doc, manifest_sha256=sha,
                     file_sha256s=[f.sha256 for f in m.files], download_bytes=m.download_bytes,
                     compression_ratio=metrics.get("compression_ratio"), kl=metrics.get("kl"),
                     metrics=metrics, status=status, job_id=job_id)
    s.add(v)
    s.flush()
    audit.record(s, actor, "version.register", "version", v.id, device_id=v.device_id,
                 mlflow=f"{mlflow_name}/{mlflow_version}", compression=v.compression_ratio, kl=v.kl)
    logger.info("registered version %s (compression %s, KL %s)", v.id, v.compression_ratio, v.kl,
                extra={"model_version": v.id, "device_id": v.device_id})
    return v


def _same_unsigned(stored_json: str, m: Manifest) -> bool:
    """Re-signing yields a new signature (Ed25519 is deterministic, but keys rotate): compare the
    signed content instead."""
    try:
        old = Manifest.from_json(stored_json)
    except WireFormatError:
        return False
    return replace(old, signature="", key_id="").signed_bytes() == replace(m, signature="", key_id="").signed_bytes()


def set_status(s: Session, version_id: str, status: str, *, actor: str) -> ModelVersion:
    if status not in VERSION_STATES:
        raise ValidationFailedError(f"status must be one of {', '.join(VERSION_STATES)}")
    v = get_version(s, version_id)
    v.status = status
    audit.record(s, actor, "version.status", "version", v.id, status=status)
    return v


def list_versions(s: Session, *, device_id: str | None = None, base_model: str | None = None,
                  status: str | None = None, limit: int = 100, offset: int = 0,
                  fleet_wide: bool = False) -> tuple[list[ModelVersion], int]:
    """fleet_wide: only the versions built for no one device (the base versions)."""
    q = select(ModelVersion)
    if device_id:
        q = q.where(ModelVersion.device_id == device_id)
    if fleet_wide:
        q = q.where(ModelVersion.device_id.is_(None))
    if base_model:
        q = q.where(ModelVersion.base_model == base_model)
    if status:
        q = q.where(ModelVersion.status == status)
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(ModelVersion.created_at.desc(), ModelVersion.id).limit(limit).offset(offset))
    return list(rows), int(total)


def manifest_of(s: Session, version_id: str) -> dict[str, Any]:
    return json.loads(get_version(s, version_id).manifest)
