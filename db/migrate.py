"""Run the Alembic migrations from Python (``pikfix db upgrade``, the embedded mode, tests).

The script location is resolved from this package, so migrations work from a source checkout and
from an installed wheel alike; no ``alembic.ini`` is needed.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from db.session import default_url, get_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x70696B666978  # "pikfix": the PostgreSQL advisory lock held while migrating
# Alembic keeps its running context in module globals, so one process migrates one thing at a time.
_process_lock = threading.Lock()


def alembic_config(url: str | None = None) -> Config:
    """An in-memory Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url or default_url()
    cfg.attributes["configure_logging"] = False
    return cfg


def _run(url: str | None, action: str, revision: str) -> None:
    url = url or default_url()
    cfg = alembic_config(url)
    with _process_lock:
        _run_locked(url, cfg, action, revision)


def _run_locked(url: str, cfg: Config, action: str, revision: str) -> None:
    # One transaction for the whole run: PostgreSQL and SQLite both have transactional DDL, so a
    # migration that fails half-way leaves the schema as it was.
    with get_engine(url).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Services may all migrate at start-up: the lock makes the others wait, then find the
            # schema current, instead of racing to create the same tables. (On SQLite the
            # BEGIN IMMEDIATE of the transaction serialises them already.)
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the schema up to ``revision`` (creates every table on an empty database)."""
    _run(url, "upgrade", revision)


def downgrade(url: str | None, revision: str) -> None:
    """Migrate the schema down to ``revision`` (``"base"`` drops every table)."""
    _run(url, "downgrade", revision)


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at, or ``None`` when it has never been migrated."""
    with get_engine(url or default_url()).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def is_up_to_date(url: str | None = None) -> bool:
    """Whether the database is at the shipped head (services check this at start-up)."""
    return current_revision(url) == head_revision()
