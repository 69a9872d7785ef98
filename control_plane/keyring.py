"""The server's signing keys over time: the current key, and the rotations that led to it.

    <keys>/signing.key       the current Ed25519 private key (32 raw bytes, 0600)
    <keys>/rotations.json    {"keys": {key_id: public_key_b64}, "retired": [key_id],
                              "announcements": [RotationAnnouncement, ...]}

`rotate_signing_key` makes a new key, announces it with a message signed by the current key
(`qsae_shared.keyrotation`), records the announcement, then replaces the current key (the old
private key is overwritten: nothing signs with it again). Processes that sign (`RotatingSigner`)
notice the new key file on their next signature, with no restart; every manifest they sign
carries the announcements (`extra["key_rotations"]`), so a device that pinned an older key
follows the chain. `trusted_keys()` (what enrollment hands out) is every key ever used minus the
retired ones, so versions signed before a rotation still verify on newly enrolled devices.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qsae_shared.keyrotation import MANIFEST_EXTRA_KEY, RotationAnnouncement, announce
from qsae_shared.manifest import Manifest
from qsae_shared.signing import SigningKey

logger = logging.getLogger(__name__)

ROTATIONS_FILE = "rotations.json"


def rotations_path(key_file: Path) -> Path:
    return Path(key_file).parent / ROTATIONS_FILE


def _read_rotations(key_file: Path) -> dict[str, Any]:
    path = rotations_path(key_file)
    if not path.exists():
        return {"keys": {}, "retired": [], "announcements": []}
    return json.loads(path.read_text())


def _write_private(path: Path, raw: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class RotatingSigner(SigningKey):
    """A SigningKey read from a key file, re-read when the file changes (a rotation), that puts
    the rotation chain into every manifest it signs."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = Path(key_file)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self.announcements: list[RotationAnnouncement] = []
        self._known: dict[str, str] = {}
        self._retired: set[str] = set()
        self._load()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = self.key_file.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _load(self) -> None:
        stamp = self._file_stamp()
        raw = self.key_file.read_bytes()
        if len(raw) != 32:
            raise ValueError(f"signing key file {self.key_file} must hold 32 raw bytes, has {len(raw)}")
        super().__init__(Ed25519PrivateKey.from_private_bytes(raw))
        doc = _read_rotations(self.key_file)
        self.announcements = [RotationAnnouncement.from_dict(a) for a in doc.get("announcements", [])]
        self._known = dict(doc.get("keys", {}))
        self._retired = set(doc.get("retired", []))
        self._stamp = stamp

    def reload_if_rotated(self) -> bool:
        """Re-read the key if the file changed since it was loaded; True when it did."""
        with self._lock:
            try:
                if self._file_stamp() == self._stamp:
                    return False
                old = self.key_id
                self._load()
            except (OSError, ValueError) as exc:  # mid-rotation or unreadable: keep the loaded key
                logger.warning("signing key %s could not be re-read (%s); still signing with %s",
                               self.key_file, exc, self.key_id)
                return False
            if old != self.key_id:
                logger.info("signing key rotated: %s -> %s", old, self.key_id)
            return old != self.key_id

    def trusted_keys(self) -> dict[str, str]:
        """key id -> base64 public key of every key devices should trust now."""
        self.reload_if_rotated()
        keys = {k: v for k, v in self._known.items() if k not in self._retired}
        keys[self.key_id] = self.public_key_b64
        return keys

    def sign_manifest(self, manifest: Manifest) -> Manifest:
        self.reload_if_rotated()
        if self.announcements:
            chain = [a.to_dict() for a in self.announcements]
            manifest = replace(manifest, extra={**manifest.extra, MANIFEST_EXTRA_KEY: chain})
        return super().sign_manifest(manifest)


def trusted_public_keys(signer: SigningKey) -> dict[str, str]:
    """What a device should pin: every trusted key for a RotatingSigner, else the signer's own."""
    if isinstance(signer, RotatingSigner):
        return signer.trusted_keys()
    return {signer.key_id: signer.public_key_b64}


def rotate_signing_key(key_file: Path, *, retire_previous: bool = False,
                       new_key: SigningKey | None = None) -> RotationAnnouncement:
    """Replace the current signing key with a new one, announced by the current one.

    `retire_previous`: devices that follow the announcement stop trusting the old key (versions it
    signed stop verifying on them); use it when the old key may be compromised only together with
    re-signing what devices run, and see docs/security.md: a stolen current key can announce
    anything, so the remedy for a stolen key is re-enrollment, not rotation."""
    key_file = Path(key_file)
    current = RotatingSigner(key_file)
    new = new_key or SigningKey.generate()
    ann = announce(current, new.public_key_b64, issued_at=time.time(), retire_previous=retire_previous)
    doc = _read_rotations(key_file)
    doc.setdefault("keys", {})[current.key_id] = current.public_key_b64
    doc["keys"][new.key_id] = new.public_key_b64
    if retire_previous:
        doc.setdefault("retired", []).append(current.key_id)
    doc.setdefault("announcements", []).append(ann.to_dict())
    path = rotations_path(key_file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)
    _write_private(key_file, new.private_bytes())
    logger.info("signing key rotated: %s -> %s%s", current.key_id, new.key_id,
                " (previous key retired)" if retire_previous else "")
    return ann
