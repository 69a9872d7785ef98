"""Signing-key rotation: a new key is announced in a message signed with the current one.

A device pins the server's public keys at enrollment. When the server starts signing with a new
key, a device that only knows the old key cannot check the new signatures by itself, and it must
not simply believe a key it is sent. So every rotation leaves an announcement:

    {"schema_version": 1, "new_key_id": ..., "new_public_key": <base64 Ed25519>,
     "signed_by": <key id of the key that was current>, "issued_at": <unix s>,
     "retire_previous": false, "signature": <base64 Ed25519 by `signed_by`>}

The signature covers the canonical JSON of every field but `signature` (sorted keys, no
spaces), like a manifest's. A device follows a chain of announcements from a key it already
trusts: each link must be signed by a key trusted at that point, and adds its new key;
`retire_previous` (for a retired or suspected key) also drops the key that signed it. A link
signed by a key the device does not trust is ignored, so a forged chain adds nothing.

The server keeps the announcements of every rotation and puts them in each manifest it signs
(`extra["key_rotations"]`, see `control_plane.keyring`), so an agent that meets a manifest
signed by a key it does not know can follow the chain there and then (`edge_agent.updater`).

Numpy-free, cryptography only (like `qsae_shared.signing`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from qsae_shared.canonical import SignedDocument
from qsae_shared.errors import SignatureError, WireFormatError
from qsae_shared.signing import SigningKey, key_id, verify

ANNOUNCEMENT_VERSION = 1
MAX_CHAIN = 64  # announcements a follower reads at most (a bound on work per manifest)
MANIFEST_EXTRA_KEY = "key_rotations"  # where a signed manifest carries the server's chain


@dataclass(frozen=True)
class RotationAnnouncement(SignedDocument):
    new_key_id: str  # key id of the new key (first 16 hex of the sha256 of its raw public key)
    new_public_key: str  # base64 of the new key's raw 32-byte Ed25519 public key
    signed_by: str  # key id of the key that was current when the rotation happened
    issued_at: float  # unix seconds
    retire_previous: bool = False  # True: followers stop trusting `signed_by` once they follow this
    signature: str = ""  # base64 Ed25519 over signed_bytes(), by `signed_by`
    schema_version: int = ANNOUNCEMENT_VERSION

    @classmethod
    def from_dict(cls, doc: Any) -> RotationAnnouncement:
        if not isinstance(doc, dict):
            raise WireFormatError("a key rotation announcement must be a JSON object")
        if doc.get("schema_version") != ANNOUNCEMENT_VERSION:
            raise WireFormatError(f"unknown key rotation schema_version {doc.get('schema_version')!r}; "
                                  f"this build reads {ANNOUNCEMENT_VERSION}")
        known = {f.name for f in fields(cls)}
        if set(doc) != known:
            missing, unknown = sorted(known - set(doc)), sorted(set(doc) - known)
            raise WireFormatError(f"key rotation announcement: missing {missing or 'nothing'}, "
                                  f"unknown {unknown or 'nothing'}")
        for name in ("new_key_id", "new_public_key", "signed_by", "signature"):
            if not isinstance(doc[name], str) or not doc[name]:
                raise WireFormatError(f"key rotation announcement `{name}` must be a non-empty string")
        issued = doc["issued_at"]
        if isinstance(issued, bool) or not isinstance(issued, (int, float)) or not math.isfinite(issued):
            raise WireFormatError("key rotation announcement `issued_at` must be a finite number")
        if not isinstance(doc["retire_previous"], bool):
            raise WireFormatError("key rotation announcement `retire_previous` must be true or false")
        ann = cls(**doc)
        try:
            derived = key_id(ann.new_public_key)
        except ValueError as exc:
            raise WireFormatError("key rotation announcement `new_public_key` is not base64") from exc
        if derived != ann.new_key_id:
            raise WireFormatError(f"key rotation announcement names key {ann.new_key_id} but its public key "
                                  f"has id {derived}")
        return ann

    @classmethod
    def from_json(cls, data: bytes | str) -> RotationAnnouncement:
        try:
            return cls.from_dict(json.loads(data))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WireFormatError(f"key rotation announcement is not JSON: {exc}") from exc


def announce(current: SigningKey, new_public_key_b64: str, *, issued_at: float,
             retire_previous: bool = False) -> RotationAnnouncement:
    """The announcement of `new_public_key_b64`, signed with the `current` key."""
    ann = RotationAnnouncement(new_key_id=key_id(new_public_key_b64), new_public_key=new_public_key_b64,
                               signed_by=current.key_id, issued_at=float(issued_at),
                               retire_previous=retire_previous)
    return replace(ann, signature=current.sign(ann.signed_bytes()))


def verify_announcement(ann: RotationAnnouncement, trusted_keys: Mapping[str, str]) -> None:
    """Raises SignatureError unless `ann` is signed by a key in `trusted_keys` (id -> base64)."""
    if ann.signed_by not in trusted_keys:
        raise SignatureError(f"rotation to key {ann.new_key_id} is signed by unknown key {ann.signed_by!r}")
    try:
        verify(ann.signed_bytes(), ann.signature, trusted_keys[ann.signed_by])
    except SignatureError as exc:
        raise SignatureError(f"rotation to key {ann.new_key_id}: bad signature by {ann.signed_by}") from exc


def follow(trusted_keys: Mapping[str, str], announcements: Iterable[RotationAnnouncement | dict[str, Any]]
           ) -> tuple[dict[str, str], list[RotationAnnouncement]]:
    """Apply every announcement that a trusted key signed, in issue order (links may arrive in any
    order: a pass repeats while it makes progress). Returns (the new trusted keys, the announcements
    applied). Malformed, forged or unreachable links are skipped, never trusted."""
    pending: list[RotationAnnouncement] = []
    for a in list(announcements)[:MAX_CHAIN]:
        try:
            pending.append(a if isinstance(a, RotationAnnouncement) else RotationAnnouncement.from_dict(a))
        except WireFormatError:
            continue
    pending.sort(key=lambda a: a.issued_at)
    keys = dict(trusted_keys)
    applied: list[RotationAnnouncement] = []
    progress = True
    while progress and pending:
        progress = False
        for a in list(pending):
            if a.signed_by not in keys:
                continue
            pending.remove(a)
            try:
                verify_announcement(a, keys)
            except SignatureError:
                continue  # a forged link: drop it
            keys[a.new_key_id] = a.new_public_key
            if a.retire_previous and a.signed_by != a.new_key_id:
                keys.pop(a.signed_by, None)
            applied.append(a)
            progress = True
    return keys, applied


def chain_from_manifest_extra(extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The announcements a manifest carries (empty when it carries none or a malformed list)."""
    chain = extra.get(MANIFEST_EXTRA_KEY)
    return [a for a in chain if isinstance(a, dict)] if isinstance(chain, list) else []
