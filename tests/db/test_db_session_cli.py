"""Engine settings (SQLite pragmas and locking) and the operator commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fixtures.processes import free_port, port_open
from sqlalchemy import text

from db import cli, migrate
from db.session import NestedTransactionError, dispose_engine, get_engine, make_sessionmaker, session_scope
from db.tenants import authenticate, create_tenant, list_api_keys, list_tenants

CLI = [sys.executable, "-m", "service.cli"]


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


def _args(url: str, **kwargs: object) -> SimpleNamespace:
    return SimpleNamespace(database_url=url, **kwargs)


def test_operator_commands(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.tenants_list_command(_args(sqlite_url)) == cli.EXIT_DB  # not migrated yet
    assert "pikfix db upgrade" in capsys.readouterr().err

    assert cli.upgrade_command(_args(sqlite_url, revision="head")) == 0
    assert f"at revision {migrate.head_revision()}" in capsys.readouterr().out

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


def test_the_repository_is_the_one_way_into_the_queries() -> None:
    import db
    from db import archives, batches, jobs, provenance, reads, references, repository, tenants, workflow

    modules = (archives, batches, jobs, provenance, reads, references, tenants, workflow)
    expected = set().union(*(m.__all__ for m in modules))
    assert set(repository.__all__) == expected
    assert all(getattr(repository, name) is getattr(m, name) for m in modules for name in m.__all__)
    assert not hasattr(db, "__all__") and not hasattr(db, "claim_job") and not hasattr(db, "session_scope")


# --------------------------------------------------------------------------- keys, over the real API


def _run_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], env=env, capture_output=True, text=True, timeout=120)


def _ok(env: dict[str, str], *argv: str) -> str:
    done = _run_cli(env, *argv)
    assert done.returncode == 0, f"pikfix {' '.join(argv)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_keys_list_and_revoke_over_the_real_api(postgres_url: str, tmp_path: Path, process_group) -> None:
    """`pikfix keys list` shows ids and prefixes, never secrets; `pikfix keys revoke` makes the running
    API answer 401 to that key at once, and only to that key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKFIX_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(PIKFIX_DATABASE_URL=postgres_url, PIKFIX_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    _ok(env, "db", "upgrade")
    acme_id = _ok(env, "tenants", "create", "acme").strip()
    _ok(env, "tenants", "create", "other")
    first, second = (_ok(env, "keys", "create", "acme").strip() for _ in range(2))
    third = _ok(env, "keys", "create", "other").strip()
    with session_scope(postgres_url, readonly=True) as s:
        ids = {k.prefix: k.id for k in list_api_keys(s)}
    first_id = ids[first.split("_")[1]]

    port = free_port()
    api = f"http://127.0.0.1:{port}"
    process_group.start_process([*CLI, "api", "--workers", "1", "--port", str(port)], env=env,
                                ready=lambda: port_open(port), timeout=120, name="api")

    def status(key: str) -> int:
        return httpx.get(f"{api}/v1/batches", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code

    assert status(first) == status(second) == status(third) == 200

    listing = _ok(env, "keys", "list")
    lines = listing.splitlines()
    assert lines[0].split()[:3] == ["ID", "KEY", "TENANT"] and len(lines) == 4
    for plaintext in (first, second, third):
        prefix, secret = plaintext.split("_")[1], plaintext.split("_", 2)[2]
        assert secret not in listing and f"pk_{prefix}_…" in listing and ids[prefix] in listing
    first_row = next(line for line in lines if first_id in line)
    assert "acme" in first_row and first_row.endswith("active")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\dZ\s+\d{4}-\d\d-\d\d \d\d:\d\dZ\s+active$", first_row), first_row
    only_acme = _ok(env, "keys", "list", "--tenant", acme_id)
    assert len(only_acme.splitlines()) == 3 and "other" not in only_acme

    assert "revoked key" in _ok(env, "keys", "revoke", first_id)
    assert status(first) == 401  # the very next request, on the API that was already running
    assert status(second) == status(third) == 200
    again = _run_cli(env, "keys", "revoke", first_id)
    assert again.returncode == 0 and "already revoked" in again.stderr
    first_row = next(line for line in _ok(env, "keys", "list").splitlines() if first_id in line)
    assert not first_row.endswith("active") and re.search(r"\d\d:\d\dZ$", first_row)

    _ok(env, "keys", "revoke", f"pk_{second.split('_')[1]}_…")  # as `keys list` shows it
    assert status(second) == 401 and status(third) == 200

    unknown = _run_cli(env, "keys", "revoke", "no-such-key")
    assert unknown.returncode == cli.EXIT_USAGE
    assert unknown.stderr.strip() == "error: no API key with id or prefix 'no-such-key'; see `pikfix keys list`"
    nobody = _run_cli(env, "keys", "list", "--tenant", "nobody")
    assert nobody.returncode == cli.EXIT_USAGE and "no tenant" in nobody.stderr


def test_session_factories_are_reused_until_their_engine_is_disposed(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    writer, reader = make_sessionmaker(url), make_sessionmaker(url, readonly=True)
    assert make_sessionmaker(url) is writer and make_sessionmaker(url, readonly=True) is reader
    assert writer is not reader
    dispose_engine(url)
    fresh = make_sessionmaker(url)
    assert fresh is not writer and fresh.kw["bind"] is not writer.kw["bind"]  # bound to the new engine
    dispose_engine(url)
