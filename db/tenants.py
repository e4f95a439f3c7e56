"""Tenants (bureaus) and their API keys.

Keys look like ``pk_<prefix>_<secret>``: the prefix (public, indexed) finds the row, the stored
``sha256`` of the whole key proves it. An unsalted fast hash is right here, unlike for passwords:
the secret is 32 random bytes (256 bits), so neither guessing nor precomputed tables can reach it,
and a deliberately slow hash (bcrypt, argon2) would only add its cost to every API request. A
database leak therefore reveals no usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ApiKey, NotFound, Tenant, TenantExists, utcnow

KEY_PREFIX = "pk"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # write last_used_at at most this often per key
_KEY_RE = re.compile(r"^pk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_tenant(s: Session, name: str) -> Tenant:
    """A new tenant; :class:`TenantExists` if the name is taken."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValueError("tenant name must be 1 to 200 characters")
    if s.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise TenantExists(f"tenant {name!r} already exists")
    tenant = Tenant(name=name, created_at=utcnow())
    try:
        with s.begin_nested():  # a concurrent insert of the same name surfaces here, not at commit
            s.add(tenant)
    except IntegrityError as exc:
        raise TenantExists(f"tenant {name!r} already exists") from exc
    return tenant


def get_tenant(s: Session, tenant_id: str) -> Tenant | None:
    return s.get(Tenant, tenant_id)


def get_tenant_by_name_or_id(s: Session, name_or_id: str) -> Tenant | None:
    """Look a tenant up the way an operator types it: its id or its name."""
    return s.scalar(select(Tenant).where(or_(Tenant.id == name_or_id, Tenant.name == name_or_id)).limit(1))


def list_tenants(s: Session) -> list[Tenant]:
    return list(s.scalars(select(Tenant).order_by(Tenant.name)))


def create_api_key(s: Session, tenant_id: str, name: str | None = None) -> tuple[str, ApiKey]:
    """A new key for the tenant: returns the plaintext (show it once, it is not stored) and the row."""
    if s.get(Tenant, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id} not found")
    for _ in range(5):  # 48-bit prefixes collide essentially never; retry rather than fail if they do
        prefix = secrets.token_hex(6)
        plaintext = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            tenant_id=tenant_id, prefix=prefix, key_hash=hash_key(plaintext), name=name, created_at=utcnow()
        )
        try:
            with s.begin_nested():
                s.add(key)
        except IntegrityError:
            continue
        return plaintext, key
    raise RuntimeError("could not allocate a unique API key prefix")


def authenticate(s: Session, plaintext: str) -> Tenant | None:
    """The tenant owning a valid, unrevoked key, else ``None``.

    The hash comparison is constant-time and runs even when the prefix is unknown, so timing does
    not tell an attacker which prefixes exist.
    """
    match = _KEY_RE.match(plaintext or "")
    if match is None:
        return None
    key = s.scalar(select(ApiKey).where(ApiKey.prefix == match.group(1)))
    presented = hash_key(plaintext)
    valid = hmac.compare_digest(presented, key.key_hash if key is not None else _DUMMY_HASH)
    if key is None or not valid or key.revoked_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        s.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key.id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session="fetch")
        )
    return key.tenant


def list_api_keys(s: Session, tenant_id: str | None = None) -> list[ApiKey]:
    """The tenant's keys, or every tenant's (``None``), oldest first; revoked keys included."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return list(s.scalars(query))


def revoke_api_key(s: Session, tenant_id: str, key_id_or_prefix: str) -> bool:
    """Revoke a key (by id or prefix) of this tenant; ``False`` if none was active."""
    result = s.execute(
        update(ApiKey)
        .where(
            ApiKey.tenant_id == tenant_id,
            or_(ApiKey.id == key_id_or_prefix, ApiKey.prefix == key_id_or_prefix),
            ApiKey.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return bool(result.rowcount)


__all__ = [
    "authenticate",
    "create_api_key",
    "create_tenant",
    "get_tenant",
    "get_tenant_by_name_or_id",
    "hash_key",
    "list_api_keys",
    "list_tenants",
    "revoke_api_key",
]
