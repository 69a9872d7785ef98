"""The server's manifest signing key: an Ed25519 key in a file, created on first use (0600)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from control_plane.keyring import RotatingSigner
from qsae_shared.signing import SigningKey

logger = logging.getLogger(__name__)


def load_or_create_signing_key(path: Path) -> SigningKey:
    """Read the key at `path`; if there is none, generate one. Safe when several processes start
    at once: the file is created exclusively and the losers read the winner's key."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = SigningKey.generate()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key.private_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process won the race
            logger.info("generated manifest signing key %s at %s", key.key_id, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return RotatingSigner(path)  # checks the length; follows rotations (control_plane.keyring)
