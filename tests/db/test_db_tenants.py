"""Tenants and API keys: only a hash is stored, authentication, revocation, last-used throttling."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db.models import ApiKey, NotFound, TenantExists, utcnow
from db.session import session_scope
from db.tenants import (
    authenticate,
    create_api_key,
    create_tenant,
    get_tenant_by_name_or_id,
    list_api_keys,
    list_tenants,
    revoke_api_key,
)


def test_tenant_names_are_unique_and_found_by_name_or_id(url: str) -> None:
    with session_scope(url) as s:
        acme = create_tenant(s, "  acme ")
        assert acme.name == "acme"
        with pytest.raises(TenantExists, match="acme"):
            create_tenant(s, "acme")
        assert get_tenant_by_name_or_id(s, "acme").id == acme.id
        assert get_tenant_by_name_or_id(s, acme.id).name == "acme"
        assert get_tenant_by_name_or_id(s, "nobody") is None
        with pytest.raises(ValueError):
            create_tenant(s, " ")
        create_tenant(s, "beta")
        assert [t.name for t in list_tenants(s)] == ["acme", "beta"]


def test_only_the_hash_of_a_key_is_stored_and_it_authenticates(url: str) -> None:
    with session_scope(url) as s:
        tenant = create_tenant(s, "acme")
        plaintext, key = create_api_key(s, tenant.id, name="ci")
        tenant_id = tenant.id
    prefix, secret = plaintext.split("_", 2)[1:]
    assert plaintext.startswith("pk_") and key.prefix == prefix and len(secret) == 43
    with session_scope(url) as s:
        row = s.scalar(select(ApiKey))
        stored = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
        assert row.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
        assert not any(secret in value for value in stored)
        assert authenticate(s, plaintext).id == tenant_id
        assert authenticate(s, plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
        assert authenticate(s, "pk_nothex_whatever") is None
        assert authenticate(s, "") is None
        assert authenticate(s, f"pk_{'0' * 12}_{secret}") is None
        with pytest.raises(NotFound):
            create_api_key(s, "00000000-0000-4000-8000-000000000000")


def test_revoked_keys_are_refused(url: str) -> None:
    with session_scope(url) as s:
        tenant = create_tenant(s, "acme")
        other = create_tenant(s, "other")
        plaintext, key = create_api_key(s, tenant.id)
        kept, _ = create_api_key(s, tenant.id)
        assert not revoke_api_key(s, other.id, key.id)  # another tenant cannot revoke it
        assert revoke_api_key(s, tenant.id, key.prefix)
        assert not revoke_api_key(s, tenant.id, key.id)  # already revoked
    with session_scope(url) as s:
        assert authenticate(s, plaintext) is None
        assert authenticate(s, kept) is not None
        assert [k.revoked_at is not None for k in list_api_keys(s, tenant.id)] == [True, False]


def test_last_used_is_written_at_most_once_a_minute(url: str) -> None:
    with session_scope(url) as s:
        plaintext, key = create_api_key(s, create_tenant(s, "acme").id)
        key_id = key.id
    with session_scope(url) as s:
        authenticate(s, plaintext)
    with session_scope(url) as s:
        first = s.get(ApiKey, key_id).last_used_at
        assert first is not None and utcnow() - first < timedelta(minutes=1)
        authenticate(s, plaintext)
    with session_scope(url) as s:
        assert s.get(ApiKey, key_id).last_used_at == first
        s.execute(update(ApiKey).values(last_used_at=first - timedelta(minutes=2)))
    with session_scope(url) as s:
        authenticate(s, plaintext)
    with session_scope(url) as s:
        assert s.get(ApiKey, key_id).last_used_at > first
