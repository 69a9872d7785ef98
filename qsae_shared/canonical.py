"""Canonical JSON: the one byte form of a document that is hashed and signed (sorted keys, no
spaces, UTF-8), and the mixin the signed wire documents (manifests, key-rotation announcements)
share."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any


def canonical_json(doc: Any, allow_nan: bool = True) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=allow_nan).encode()


class SignedDocument:
    """For a dataclass with a `signature` field: its dict, its canonical JSON, and the bytes its
    signature covers (every field but `signature`; NaN is refused there)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    def signed_bytes(self) -> bytes:
        d = self.to_dict()
        d.pop("signature")
        return canonical_json(d, allow_nan=False)
