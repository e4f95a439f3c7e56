"""The schema comes from the Alembic migrations, matches the models, and goes down cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db import migrate
from db.models import Base
from db.session import dispose_engine, get_engine

TABLES = {
    "archives",
    "tenants",
    "api_keys",
    "batches",
    "jobs",
    "references",
    "job_references",
    "quality_metrics",
    "job_events",
    "batch_counts",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def empty_url(request: pytest.FixtureRequest):
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    yield url
    dispose_engine(url)


def _tables(url: str) -> set[str]:
    with get_engine(url).connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_upgrade_to_head_matches_the_models_and_downgrade_to_base_empties(empty_url: str) -> None:
    assert migrate.current_revision(empty_url) is None
    migrate.upgrade(empty_url)
    assert migrate.current_revision(empty_url) == migrate.head_revision() == "0004"
    assert migrate.is_up_to_date(empty_url)
    assert _tables(empty_url) == TABLES | {"alembic_version"}
    with get_engine(empty_url).connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("jobs")}
    assert diffs == []
    assert {"ix_jobs_batch_id_status", "ix_jobs_status_sent_at", "ix_jobs_tenant_id_created_at"} <= indexes

    migrate.upgrade(empty_url)  # idempotent at head
    migrate.downgrade(empty_url, "base")
    assert migrate.current_revision(empty_url) is None
    assert _tables(empty_url) == {"alembic_version"}

    migrate.upgrade(empty_url)  # and back up again
    assert _tables(empty_url) == TABLES | {"alembic_version"}


def test_constraints_are_enforced(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    now = "2024-01-01 00:00:00"
    with get_engine(empty_url).connect() as conn:
        # Foreign keys are on (SQLite included).
        with pytest.raises(sa.exc.IntegrityError), conn.begin():
            conn.execute(
                sa.text(
                    "INSERT INTO api_keys (id, tenant_id, prefix, key_hash, created_at) "
                    "VALUES ('k', 'no-such-tenant', 'p', 'h', :now)"
                ),
                {"now": now},
            )
        # Statuses are checked.
        with pytest.raises(sa.exc.IntegrityError), conn.begin():
            conn.execute(
                sa.text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', :now)"), {"now": now}
            )
            conn.execute(
                sa.text(
                    "INSERT INTO batches (id, tenant_id, name, options, status, total_jobs, created_at) "
                    "VALUES ('b', 't', 'b', '{}', 'bogus', 0, :now)"
                ),
                {"now": now},
            )


def test_services_migrating_at_the_same_time_do_not_collide(empty_url: str) -> None:
    """Several processes (API, workers) upgrading one fresh database at start-up all succeed."""
    code = "import sys; from db import migrate; migrate.upgrade(sys.argv[1])"
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_url], cwd=root, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    failures = [p.stderr.read() for p in procs if p.wait(timeout=120) != 0]
    assert failures == []
    assert migrate.current_revision(empty_url) == migrate.head_revision()


def test_upgrading_to_batch_counts_counts_the_existing_jobs(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0002")
    now = "2026-01-01 10:00:00+00:00"
    later = "2026-01-01 10:02:00+00:00"
    with get_engine(empty_url).begin() as conn:
        conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 'acme', :now)"), {"now": now})
        for batch in ("b1", "b2"):
            conn.execute(sa.text(
                "INSERT INTO batches (id, tenant_id, name, options, status, total_jobs, created_at) "
                "VALUES (:id, 't', 'x', '{}', 'submitted', 0, :now)"), {"id": batch, "now": now})
        for i, status in enumerate(["queued", "running", "succeeded", "succeeded", "failed", "cancelled"]):
            ran = status in ("succeeded", "failed")
            conn.execute(sa.text(
                "INSERT INTO jobs (id, tenant_id, batch_id, status, attempts, input_key, input_name, output_format, "
                "reference_mode, created_at, queued_at, updated_at, started_at, finished_at) VALUES "
                "(:id, 't', 'b1', :st, 1, 'k', 'n', 'png', 'none', :now, :now, :now, :started, :finished)"),
                {"id": f"j{i}", "st": status, "now": now, "started": now if ran else None,
                 "finished": later if ran else None})
    migrate.upgrade(empty_url)
    with get_engine(empty_url).connect() as conn:
        rows = {r.batch_id: r for r in conn.execute(sa.text("SELECT * FROM batch_counts"))}
    assert set(rows) == {"b1", "b2"}
    b1 = rows["b1"]
    assert (b1.queued, b1.running, b1.succeeded, b1.failed, b1.cancelled, b1.ran) == (1, 1, 2, 1, 1, 3)
    assert (rows["b2"].queued, rows["b2"].ran, rows["b2"].first_started_at) == (0, 0, None)
