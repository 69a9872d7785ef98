"""Credentials: random bearer secrets, stored only as sha256 hashes (they carry 256 bits of
randomness, so a fast hash is enough and keeps a cache miss cheap)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

DEVICE_TOKEN_PREFIX = "qd_"  # a device's bearer token
ENROLLMENT_TOKEN_PREFIX = "qe_"  # one-time enrollment token
API_KEY_PREFIX = "qk_"  # an operator's API key
ROLES = ("viewer", "operator", "admin")  # each role may do what the ones before it may


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id(prefix: str, nbytes: int = 8) -> str:
    return f"{prefix}{secrets.token_hex(nbytes)}"


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
