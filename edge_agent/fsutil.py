"""Crash-safe file writes: temp file in the same folder, fsync, `os.replace`, fsync the folder.

A reader sees either the old content or the new one, never a torn file, whether the process is
killed (SIGKILL) or the machine loses power at any point.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace `path` with `data` atomically (and durably unless `durable=False`)."""
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, doc: Any, durable: bool = True) -> None:
    atomic_write(path, json.dumps(doc, sort_keys=True, indent=1).encode(), durable)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return default


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files a killed process left behind; returns how many."""
    n = 0
    for p in folder.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n
