"""Migration 0004 (archival integrity) on both backends: existing rows get their defaults, the new status
and constraints hold, and it goes down again (a job awaiting review comes back as succeeded)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db import migrate
from db.models import Base
from db.session import dispose_engine, get_engine

NOW = "2026-01-01 10:00:00+00:00"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def at_0003(request: pytest.FixtureRequest):
    """A database at revision 0003 holding a tenant, a batch, a succeeded job and its events."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate.upgrade(url, "0003")
    with get_engine(url).begin() as conn:
        conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 'acme', :now)"), {"now": NOW})
        conn.execute(sa.text(
            "INSERT INTO batches (id, tenant_id, name, options, status, total_jobs, created_at) "
            "VALUES ('b', 't', 'x', '{}', 'submitted', 1, :now)"), {"now": NOW})
        conn.execute(sa.text(
            "INSERT INTO batch_counts (batch_id, queued, running, succeeded, failed, cancelled, ran) "
            "VALUES ('b', 0, 0, 1, 0, 0, 1)"))
        conn.execute(sa.text(
            "INSERT INTO jobs (id, tenant_id, batch_id, status, attempts, input_key, input_name, output_format, "
            "reference_mode, created_at, updated_at) VALUES "
            "('j', 't', 'b', 'succeeded', 1, 'k', 'n.png', 'png', 'none', :now, :now)"), {"now": NOW})
        conn.execute(sa.text(
            "INSERT INTO job_events (job_id, at, from_status, to_status) VALUES ('j', :now, NULL, 'queued')"),
            {"now": NOW})
    yield url
    dispose_engine(url)


def _one(url: str, sql: str) -> sa.Row:
    with get_engine(url).connect() as conn:
        return conn.execute(sa.text(sql)).one()


def test_existing_rows_get_the_defaults_and_the_schema_matches_the_models(at_0003: str) -> None:
    migrate.upgrade(at_0003)
    assert migrate.current_revision(at_0003) == "0004"
    job = _one(at_0003, "SELECT colourize, mark, review, output_sha256, redo_of, cancel_requested_at FROM jobs")
    assert (bool(job.colourize), bool(job.mark), job.review, job.output_sha256, job.redo_of,
            job.cancel_requested_at) == (True, False, None, None, None, None)
    event = _one(at_0003, "SELECT kind, outcome, actor FROM job_events")
    assert tuple(event) == ("status", None, None)
    assert _one(at_0003, "SELECT awaiting_review FROM batch_counts").awaiting_review == 0
    assert _one(at_0003, "SELECT idempotency_key FROM batches").idempotency_key is None
    with get_engine(at_0003).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_the_new_values_are_checked(at_0003: str) -> None:
    migrate.upgrade(at_0003)
    engine = get_engine(at_0003)
    with engine.begin() as conn:  # what 0004 allows
        conn.execute(sa.text("UPDATE jobs SET status = 'awaiting_review', review = 'pending', redo_of = 'j'"))
        conn.execute(sa.text("UPDATE job_events SET kind = 'fixity', outcome = 'failure', actor = 'w1'"))
        conn.execute(sa.text("UPDATE batches SET idempotency_key = 'key-1'"))
    bad = [
        "UPDATE jobs SET status = 'paused'",
        "UPDATE jobs SET review = 'maybe'",
        "UPDATE jobs SET redo_of = 'no-such-job'",
        "UPDATE job_events SET kind = 'gossip'",
        "UPDATE job_events SET outcome = 'meh'",
        "INSERT INTO batches (id, tenant_id, name, options, status, total_jobs, created_at, idempotency_key) "
        "VALUES ('b2', 't', 'y', '{}', 'open', 0, '2026-01-01 10:00:00+00:00', 'key-1')",
    ]
    for sql in bad:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.text(sql))


def test_downgrade_brings_jobs_awaiting_review_back_as_succeeded(at_0003: str) -> None:
    migrate.upgrade(at_0003)
    with get_engine(at_0003).begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET status = 'awaiting_review', review = 'pending'"))
        conn.execute(sa.text("UPDATE batch_counts SET succeeded = 0, awaiting_review = 1"))
    migrate.downgrade(at_0003, "0003")
    assert _one(at_0003, "SELECT status FROM jobs").status == "succeeded"
    assert _one(at_0003, "SELECT succeeded FROM batch_counts").succeeded == 1
    # Rebuilding jobs on SQLite must not take the rows hanging off it along (ON DELETE CASCADE).
    assert _one(at_0003, "SELECT COUNT(*) AS n FROM job_events").n == 1
    migrate.upgrade(at_0003)
    assert migrate.current_revision(at_0003) == "0004"
