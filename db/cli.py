"""Handlers for ``pikfix db …``, ``pikfix tenants …`` and ``pikfix keys …``.

Each returns an exit code. Mistakes an operator can make (a taken name, an unknown tenant, a
database that is not migrated or not reachable) print one line on stderr instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from functools import wraps

from alembic.util.exc import CommandError
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from db import migrate
from db.models import DatabaseError, Tenant
from db.session import default_url, session_scope
from db.tenants import create_api_key, create_tenant, get_tenant_by_name_or_id, list_tenants

EXIT_USAGE = 2
EXIT_DB = 3

# Alembic announces each of its plugins at INFO; operators only need the migration lines.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _handles_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @wraps(func)
    def run(args: argparse.Namespace) -> int:
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


def _url(args: argparse.Namespace) -> str | None:
    return getattr(args, "database_url", None) or None


@_handles_errors
def upgrade_command(args: argparse.Namespace) -> int:
    url = _url(args)
    revision = getattr(args, "revision", None) or "head"
    migrate.upgrade(url, revision)
    print(f"database at revision {migrate.current_revision(url)}")
    return 0


@_handles_errors
def downgrade_command(args: argparse.Namespace) -> int:
    url = _url(args)
    migrate.downgrade(url, args.revision)
    print(f"database at revision {migrate.current_revision(url) or 'base (empty)'}")
    return 0


@_handles_errors
def tenants_create_command(args: argparse.Namespace) -> int:
    with session_scope(_url(args)) as s:
        tenant = create_tenant(s, args.name)
        tenant_id = tenant.id
    print(tenant_id)
    return 0


@_handles_errors
def tenants_list_command(args: argparse.Namespace) -> int:
    with session_scope(_url(args), readonly=True) as s:
        tenants = list_tenants(s)
    for tenant in tenants:
        print(f"{tenant.id}  {tenant.name}  created {tenant.created_at:%Y-%m-%d %H:%M}Z")
    if not tenants:
        print("no tenants yet; create one with `pikfix tenants create NAME`", file=sys.stderr)
    return 0


@_handles_errors
def keys_create_command(args: argparse.Namespace) -> int:
    with session_scope(_url(args)) as s:
        tenant = _require_tenant(s, args.tenant)
        plaintext, _key = create_api_key(s, tenant.id, name=getattr(args, "name", None))
        tenant_name = tenant.name
    print(plaintext)
    print(f"API key for tenant {tenant_name!r}. Store it now: it cannot be shown again.", file=sys.stderr)
    return 0


def _require_tenant(s: Session, name_or_id: str) -> Tenant:
    tenant = get_tenant_by_name_or_id(s, name_or_id)
    if tenant is None:
        raise DatabaseError(f"no tenant named or with id {name_or_id!r}; see `pikfix tenants list`")
    return tenant
