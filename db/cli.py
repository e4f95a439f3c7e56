"""Handlers for ``pikfix db …``, ``pikfix tenants …`` and ``pikfix keys …``.

Each returns an exit code. Mistakes an operator can make (a taken name, an unknown tenant, a
database that is not migrated or not reachable) print one line on stderr instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from types import SimpleNamespace

from alembic.util.exc import CommandError
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from db import migrate
from db.models import ApiKey, DatabaseError, Tenant
from db.session import default_url, session_scope
from db.tenants import (
    KEY_PREFIX,
    create_api_key,
    create_tenant,
    get_tenant_by_name_or_id,
    list_api_keys,
    list_tenants,
    revoke_api_key,
)

EXIT_USAGE = 2
EXIT_DB = 3

# Alembic announces each of its plugins at INFO; operators only need the migration lines.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _handles_errors(func: Callable[[SimpleNamespace], int]) -> Callable[[SimpleNamespace], int]:
    @wraps(func)
    def run(args: SimpleNamespace) -> int:
        try:
            return func(args)
        except (DatabaseError, ValueError) as exc:
            _error(str(exc))
            return EXIT_USAGE
        except CommandError as exc:
            _error(f"migration: {exc}")
            return EXIT_USAGE
        except (OperationalError, ProgrammingError) as exc:
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            _error(f"database {_safe_url()}: {reason}")
            if isinstance(exc, ProgrammingError) or "no such table" in reason:
                print("hint: run `pikfix db upgrade` to create or update the schema", file=sys.stderr)
            return EXIT_DB

    return run


def _safe_url() -> str:
    """The database URL without its password, for error messages."""
    from sqlalchemy.engine import make_url

    return make_url(default_url()).render_as_string(hide_password=True)


def _url(args: SimpleNamespace) -> str | None:
    return getattr(args, "database_url", None) or None


@_handles_errors
def upgrade_command(args: SimpleNamespace) -> int:
    url = _url(args)
    revision = getattr(args, "revision", None) or "head"
    migrate.upgrade(url, revision)
    print(f"database at revision {migrate.current_revision(url)}")
    return 0


@_handles_errors
def downgrade_command(args: SimpleNamespace) -> int:
    url = _url(args)
    migrate.downgrade(url, args.revision)
    print(f"database at revision {migrate.current_revision(url) or 'base (empty)'}")
    return 0


@_handles_errors
def tenants_create_command(args: SimpleNamespace) -> int:
    with session_scope(_url(args)) as s:
        tenant = create_tenant(s, args.name)
        tenant_id = tenant.id
    print(tenant_id)
    return 0


@_handles_errors
def tenants_list_command(args: SimpleNamespace) -> int:
    with session_scope(_url(args), readonly=True) as s:
        tenants = list_tenants(s)
    for tenant in tenants:
        print(f"{tenant.id}  {tenant.name}  created {tenant.created_at:%Y-%m-%d %H:%M}Z")
    if not tenants:
        print("no tenants yet; create one with `pikfix tenants create NAME`", file=sys.stderr)
    return 0


@_handles_errors
def keys_create_command(args: SimpleNamespace) -> int:
    with session_scope(_url(args)) as s:
        tenant = _require_tenant(s, args.tenant)
        plaintext, _key = create_api_key(s, tenant.id, name=getattr(args, "name", None))
        tenant_name = tenant.name
    print(plaintext)
    print(f"API key for tenant {tenant_name!r}. Store it now: it cannot be shown again.", file=sys.stderr)
    return 0


def _shown_key(key: ApiKey) -> str:
    """The public part of a key, as a client would recognise the start of theirs."""
    return f"{KEY_PREFIX}_{key.prefix}_…"


def _when(value) -> str:
    return f"{value:%Y-%m-%d %H:%M}Z" if value is not None else "-"


@_handles_errors
def keys_list_command(args: SimpleNamespace) -> int:
    """Ids, public prefixes and use of the keys; the secrets are not stored, so they cannot be shown."""
    with session_scope(_url(args), readonly=True) as s:
        tenant_id = _require_tenant(s, args.tenant).id if getattr(args, "tenant", None) else None
        rows = [
            (k.id, _shown_key(k), k.tenant.name, k.name or "-", _when(k.created_at), _when(k.last_used_at),
             _when(k.revoked_at) if k.revoked_at else "active")
            for k in list_api_keys(s, tenant_id)
        ]
    if not rows:
        print("no API keys; create one with `pikfix keys create TENANT`", file=sys.stderr)
        return 0
    header = ("ID", "KEY", "TENANT", "NAME", "CREATED", "LAST USED", "REVOKED")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _key_reference(text: str) -> str:
    """A key id, or a prefix given bare, as `pk_PREFIX`, as `keys list` shows it, or as the whole key."""
    text = text.strip().removesuffix("…").removesuffix("_")
    parts = text.split("_")
    if len(parts) >= 2 and parts[0] == KEY_PREFIX:
        return parts[1]
    return text


@_handles_errors
def keys_revoke_command(args: SimpleNamespace) -> int:
    reference = _key_reference(args.key_id)
    with session_scope(_url(args)) as s:
        matches = [k for k in list_api_keys(s) if reference in (k.id, k.prefix)]
        if not matches:
            raise DatabaseError(f"no API key with id or prefix {args.key_id!r}; see `pikfix keys list`")
        (key,) = matches  # ids and prefixes are unique, and an id never looks like a prefix
        key_id, shown, tenant_name, revoked_at = key.id, _shown_key(key), key.tenant.name, key.revoked_at
        if revoked_at is None:
            revoke_api_key(s, key.tenant_id, key_id)
    if revoked_at is not None:
        print(f"key {key_id} ({shown}, tenant {tenant_name!r}) was already revoked at {_when(revoked_at)}",
              file=sys.stderr)
        return 0
    print(f"revoked key {key_id} ({shown}, tenant {tenant_name!r}); the API answers 401 to it from now on")
    return 0


def _require_tenant(s: Session, name_or_id: str) -> Tenant:
    tenant = get_tenant_by_name_or_id(s, name_or_id)
    if tenant is None:
        raise DatabaseError(f"no tenant named or with id {name_or_id!r}; see `pikfix tenants list`")
    return tenant
