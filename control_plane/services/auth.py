"""Credentials in the database: operator API keys, bearer lookups, the revocation log."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from control_plane import security
from control_plane.db.models import ApiKey, Device, Revocation, utcnow
from control_plane.errors import ConflictError, NotFoundError, ValidationFailedError
from control_plane.services import audit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who a bearer token belongs to."""

    kind: str  # "device" | "operator"
    id: str  # device id or API key id
    role: str = ""  # operator role; "" for devices

    @property
    def actor(self) -> str:
        return f"{'device' if self.kind == 'device' else 'apikey'}:{self.id}"


def principal_for_hash(s: Session, token_hash: str, kind: str) -> Principal | None:
    """The live (not revoked) principal whose token hashes to `token_hash`, else None."""
    if kind == "device":
        device = s.execute(select(Device.id, Device.revoked_at).where(Device.token_hash == token_hash)).first()
        if device is None or device.revoked_at is not None:
            return None
        return Principal("device", device.id)
    key = s.execute(select(ApiKey.id, ApiKey.role, ApiKey.revoked_at)
                    .where(ApiKey.key_hash == token_hash)).first()
    if key is None or key.revoked_at is not None:
        return None
    return Principal("operator", key.id, key.role)


REVOCATION_OVERLAP = dt.timedelta(minutes=2)


_DEVICE_BY_HASH = select(Device.id, Device.revoked_at).where(Device.token_hash == bindparam("h"))
_KEY_BY_HASH = select(ApiKey.id, ApiKey.role, ApiKey.revoked_at).where(ApiKey.key_hash == bindparam("h"))


async def principal_for_hash_async(engine: AsyncEngine, token_hash: str, kind: str) -> Principal | None:
    """`principal_for_hash` without an ORM session: the token cache's miss path (one indexed
    read, a fraction of the cost of a full unit of work)."""
    async with engine.connect() as conn:
        if kind == "device":
            device = (await conn.execute(_DEVICE_BY_HASH, {"h": token_hash})).first()
            return None if device is None or device.revoked_at is not None else Principal("device", device.id)
        key = (await conn.execute(_KEY_BY_HASH, {"h": token_hash})).first()
        return None if key is None or key.revoked_at is not None else Principal("operator", key.id, key.role)


def revocations_since(s: Session, after_id: int) -> tuple[int, list[str]]:
    """(newest revocation id, hashes revoked after `after_id` or within the last two minutes).
    The overlap matters: ids are assigned at insert, so a slow transaction can commit an id below
    one already read; re-reading recent rows catches it (evicting twice is harmless)."""
    since = utcnow() - REVOCATION_OVERLAP
    rows = s.execute(select(Revocation.id, Revocation.token_hash)
                     .where(or_(Revocation.id > after_id, Revocation.at >= since))
                     .order_by(Revocation.id)).all()
    if not rows:
        return after_id, []
    return max(after_id, rows[-1].id), [r.token_hash for r in rows]


def latest_revocation_id(s: Session) -> int:
    return int(s.scalar(select(func.coalesce(func.max(Revocation.id), 0))) or 0)


def add_revocation(s: Session, token_hash: str | None) -> None:
    if token_hash:
        s.add(Revocation(token_hash=token_hash))


def create_api_key(s: Session, *, name: str, role: str, actor: str,
                   secret: str | None = None) -> tuple[ApiKey, str]:
    """A new operator key; returns the row and the secret (shown once, stored hashed)."""
    if role not in security.ROLES:
        raise ValidationFailedError(f"role must be one of {', '.join(security.ROLES)}, not {role!r}")
    secret = secret or security.new_secret(security.API_KEY_PREFIX)
    if not secret.startswith(security.API_KEY_PREFIX) or len(secret) < 20:
        raise ValidationFailedError(f"an API key must start with {security.API_KEY_PREFIX!r} "
                                    "and be at least 20 characters long")
    h = security.hash_secret(secret)
    if s.scalar(select(ApiKey.id).where(ApiKey.key_hash == h)) is not None:
        raise ConflictError("that API key already exists")
    key = ApiKey(id=security.new_id("k-"), name=name, role=role, key_hash=h)
    s.add(key)
    s.flush()
    audit.record(s, actor, "apikey.create", "apikey", key.id, name=name, role=role)
    return key, secret


def ensure_api_key(s: Session, *, secret: str, role: str, name: str) -> ApiKey:
    """Make sure a key with this exact secret exists (for FLEET_BOOTSTRAP_ADMIN_KEY)."""
    h = security.hash_secret(secret)
    existing = s.scalar(select(ApiKey).where(ApiKey.key_hash == h))
    if existing is not None:
        return existing
    try:
        with s.begin_nested():  # replicas starting together race here
            return create_api_key(s, name=name, role=role, actor="system:bootstrap", secret=secret)[0]
    except (IntegrityError, ConflictError):
        return s.scalars(select(ApiKey).where(ApiKey.key_hash == h)).one()


def get_api_key(s: Session, key_id: str) -> ApiKey:
    key = s.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"API key {key_id} does not exist")
    return key


def revoke_api_key(s: Session, key_id: str, actor: str) -> ApiKey:
    key = s.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"API key {key_id} does not exist")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        add_revocation(s, key.key_hash)
        audit.record(s, actor, "apikey.revoke", "apikey", key.id)
    return key


def list_api_keys(s: Session) -> list[ApiKey]:
    return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def is_expired(at: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    return at is not None and at <= (now or utcnow())
