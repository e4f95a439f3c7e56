"""Engine settings (SQLite pragmas and locking) and the operator commands."""

from __future__ import annotations

import argparse

import pytest
from sqlalchemy import text

from db import cli, migrate
from db.session import NestedTransactionError, dispose_engine, get_engine, session_scope
from db.tenants import authenticate, create_tenant, list_tenants


@pytest.fixture
def sqlite_db(sqlite_url: str):
    migrate.upgrade(sqlite_url)
    yield sqlite_url
    dispose_engine(sqlite_url)


def test_sqlite_engine_settings(sqlite_db: str) -> None:
    assert get_engine(sqlite_db) is get_engine(sqlite_db)  # cached per URL
    with get_engine(sqlite_db).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_session_scope_commits_or_rolls_back(sqlite_db: str) -> None:
    with pytest.raises(RuntimeError), session_scope(sqlite_db) as s:
        create_tenant(s, "lost")
        raise RuntimeError("boom")
    with session_scope(sqlite_db) as s:
        create_tenant(s, "kept")
    with session_scope(sqlite_db, readonly=True) as s:
        assert [t.name for t in list_tenants(s)] == ["kept"]


def test_nested_sqlite_write_sessions_fail_fast_instead_of_waiting(sqlite_db: str) -> None:
    with session_scope(sqlite_db) as outer:
        create_tenant(outer, "outer")
        with pytest.raises(NestedTransactionError), session_scope(sqlite_db) as inner:
            list_tenants(inner)
        with session_scope(sqlite_db, readonly=True) as reader:  # a reader does not wait
            assert list_tenants(reader) == []  # and does not see uncommitted rows
    with session_scope(sqlite_db) as s:
        assert [t.name for t in list_tenants(s)] == ["outer"]


def _args(url: str, **kwargs: object) -> argparse.Namespace:
    return argparse.Namespace(database_url=url, **kwargs)


def test_operator_commands(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.tenants_list_command(_args(sqlite_url)) == cli.EXIT_DB  # not migrated yet
    assert "pikfix db upgrade" in capsys.readouterr().err

    assert cli.upgrade_command(_args(sqlite_url, revision="head")) == 0
    assert "0002" in capsys.readouterr().out

    assert cli.tenants_create_command(_args(sqlite_url, name="acme")) == 0
    tenant_id = capsys.readouterr().out.strip()
    assert len(tenant_id) == 36
    assert cli.tenants_create_command(_args(sqlite_url, name="acme")) == cli.EXIT_USAGE
    assert "already exists" in capsys.readouterr().err

    assert cli.keys_create_command(_args(sqlite_url, tenant="acme")) == 0
    out, err = capsys.readouterr()
    assert "cannot be shown again" in err
    with session_scope(sqlite_url) as s:
        assert authenticate(s, out.strip()).id == tenant_id
    assert cli.keys_create_command(_args(sqlite_url, tenant=tenant_id)) == 0
    capsys.readouterr()
    assert cli.keys_create_command(_args(sqlite_url, tenant="nobody")) == cli.EXIT_USAGE
    assert "no tenant" in capsys.readouterr().err

    assert cli.tenants_list_command(_args(sqlite_url)) == 0
    assert "acme" in capsys.readouterr().out
    assert cli.upgrade_command(_args(sqlite_url, revision="nope")) == cli.EXIT_USAGE
    assert cli.downgrade_command(_args(sqlite_url, revision="base")) == 0
    assert migrate.current_revision(sqlite_url) is None
    dispose_engine(sqlite_url)


def test_the_package_exports_every_query() -> None:
    import db
    from db import archives, batches, jobs, references, repository, tenants, workflow

    modules = (archives, batches, jobs, references, tenants, workflow)
    expected = set().union(*(m.__all__ for m in modules))
    assert set(repository.__all__) == expected
    assert expected | {"session_scope", "get_engine", "Job", "NotFound"} <= set(db.__all__)
    assert all(getattr(db, name) is getattr(repository, name) for name in expected)
