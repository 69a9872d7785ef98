"""Content-addressed artifact store: a file's address is its sha256. The local folder is the
default; anything with the same methods (an S3-style bucket) can replace it."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

from control_plane.errors import NotFoundError, ValidationFailedError

_SHA = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def check_sha256(sha256: str) -> str:
    if not _SHA.match(sha256):
        raise ValidationFailedError(f"{sha256!r} is not a sha256 (64 lowercase hex characters)")
    return sha256


class ArtifactStore(Protocol):
    def put_bytes(self, data: bytes) -> str: ...
    def put_file(self, path: Path) -> str: ...
    def exists(self, sha256: str) -> bool: ...
    def size(self, sha256: str) -> int: ...
    def read_bytes(self, sha256: str) -> bytes: ...
    def local_path(self, sha256: str) -> Path | None: ...


class LocalArtifactStore:
    """Files under root/ab/cd/<sha256>, written atomically (temp file, fsync, rename), never
    changed afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _commit(self, tmp: Path, sha256: str) -> str:
        dest = self._path(sha256)
        if dest.exists():
            tmp.unlink(missing_ok=True)
            return sha256
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        return sha256

    def _write(self, src: BinaryIO | bytes) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(src, bytes):
                    h.update(src)
                    out.write(src)
                else:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(name, 0o644)
            return self._commit(Path(name), h.hexdigest())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> str:
        return self._write(bytes(data))

    def put_file(self, path: Path) -> str:
        with open(path, "rb") as fh:
            return self._write(fh)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        p = self._path(sha256)
        if not p.is_file():
            raise NotFoundError(f"artifact {sha256} is not in the store")
        return p.stat().st_size

    def read_bytes(self, sha256: str) -> bytes:
        p = self._path(sha256)
        if not p.is_file():
            raise NotFoundError(f"artifact {sha256} is not in the store")
        return p.read_bytes()

    def local_path(self, sha256: str) -> Path | None:
        p = self._path(sha256)
        return p if p.is_file() else None
