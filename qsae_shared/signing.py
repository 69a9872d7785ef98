"""Ed25519 signatures over manifests (and key-rotation announcements).

A key id is the first 16 hex characters of the sha256 of the raw 32-byte public key. Devices pin
the public keys they got at enrollment and accept a manifest only when its `key_id` is pinned and
its signature verifies.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qsae_shared.errors import SignatureError
from qsae_shared.manifest import Manifest


def key_id(public_key_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        self.public_key_b64 = base64.b64encode(raw).decode()
        self.key_id = key_id(self.public_key_b64)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes(serialization.Encoding.Raw,
                                           serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._private.sign(data)).decode()

    def sign_manifest(self, manifest: Manifest) -> Manifest:
        unsigned = replace(manifest, key_id=self.key_id, signature="")
        return replace(unsigned, signature=self.sign(unsigned.signed_bytes()))


def verify(data: bytes, signature_b64: str, public_key_b64: str) -> None:
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        public.verify(base64.b64decode(signature_b64), data)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc


def verify_manifest(manifest: Manifest, trusted_keys: dict[str, str]) -> None:
    """trusted_keys: key id -> base64 public key. Raises SignatureError naming what failed."""
    if manifest.key_id not in trusted_keys:
        raise SignatureError(f"manifest {manifest.version_id} is signed by unknown key "
                             f"{manifest.key_id!r}")
    try:
        verify(manifest.signed_bytes(), manifest.signature, trusted_keys[manifest.key_id])
    except SignatureError as exc:
        raise SignatureError(f"manifest {manifest.version_id}: bad signature") from exc
