"""Archival integrity: idempotent batch creation, result digests, restore-only and marked jobs, the
review gate, cancel requests and typed events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12

Every new column is nullable or has a server default, so existing rows stay valid: old jobs colourize
and carry no mark, old events are status changes. The job status check gains ``awaiting_review``.

SQLite cannot alter a constraint, and rebuilding ``jobs`` or ``batches`` the batch-mode way would drop the
table, which, with foreign keys on (they are, inside the migration's transaction), deletes every event,
metric and job hanging off it through ``ON DELETE CASCADE``. So on SQLite columns are added in place
(constraints inline, which ``ADD COLUMN`` allows) and the status check is rewritten in the stored schema,
the procedure SQLite documents for constraint changes that leave the stored rows as they are. Downgrading
rebuilds ``jobs`` with its dependants' rows set aside and put back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
_NEW_STATUSES = (*_OLD_STATUSES, "awaiting_review")
_REVIEW = ("pending", "approved", "rejected")
_KINDS = ("status", "fixity", "ingestion", "review", "cancel")
_OUTCOMES = ("success", "failure")
_JOB_DEPENDANTS = ("job_events", "job_references", "quality_metrics")
_REDO_FK = ", \n\tCONSTRAINT fk_jobs_redo_of_jobs FOREIGN KEY(redo_of) REFERENCES jobs (id) ON DELETE SET NULL"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _checked(name: str, type_: sa.types.TypeEngine, check_name: str, condition: str, **kw) -> sa.Column:
    """A new column with its CHECK constraint inline (what ``ADD COLUMN`` can carry on SQLite too)."""
    return sa.Column(name, type_, sa.CheckConstraint(condition, name=op.f(check_name)), **kw)


def upgrade() -> None:
    op.add_column("batches", sa.Column("idempotency_key", sa.String(length=128), nullable=True))
    op.create_index("uq_batches_tenant_id_idempotency_key", "batches", ["tenant_id", "idempotency_key"], unique=True)
    op.add_column("batch_counts", sa.Column("awaiting_review", sa.Integer(), nullable=False, server_default="0"))

    op.add_column("jobs", sa.Column("output_sha256", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("colourize", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.add_column("jobs", sa.Column("mark", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("jobs", _checked("review", sa.String(length=16), "ck_jobs_review",
                                   f"review IS NULL OR {_in('review', _REVIEW)}", nullable=True))
    op.add_column("jobs", sa.Column("review_note", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("job_events", _checked("kind", sa.String(length=16), "ck_job_events_kind", _in("kind", _KINDS),
                                         nullable=False, server_default="status"))
    op.add_column("job_events", _checked("outcome", sa.String(length=16), "ck_job_events_outcome",
                                         f"outcome IS NULL OR {_in('outcome', _OUTCOMES)}", nullable=True))
    op.add_column("job_events", sa.Column("actor", sa.String(length=255), nullable=True))
    op.add_column("jobs", sa.Column("redo_of", sa.String(length=36), nullable=True))
    if _sqlite():  # every redo_of is NULL yet: the new foreign key holds
        _rewrite_sqlite_table("jobs", _in("status", _OLD_STATUSES), _in("status", _NEW_STATUSES), add=_REDO_FK)
    else:
        op.create_foreign_key(op.f("fk_jobs_redo_of_jobs"), "jobs", "jobs", ["redo_of"], ["id"], ondelete="SET NULL")
        op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
        op.create_check_constraint(op.f("ck_jobs_status"), "jobs", _in("status", _NEW_STATUSES))


def _rewrite_sqlite_table(table: str, old: str, new: str, *, add: str | None = None, drop: str | None = None) -> None:
    """Replace a CHECK condition in SQLite's stored schema and add or drop a table constraint
    (sqlite.org/lang_altertable.html, section 7): the rows are untouched, and the schema version bump
    makes every connection read the new schema."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).scalar()
    if sql is None or sql.count(old) != 1 or (drop is not None and sql.count(drop) != 1):
        raise RuntimeError(f"the {table} schema is not the one this migration rewrites")
    sql = sql.replace(old, new)
    if drop is not None:
        sql = sql.replace(drop, "")
    if add is not None:
        sql = sql.rstrip().removesuffix(")").rstrip() + add + "\n)"
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (sql, table))
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")


@contextmanager
def _dependants_kept(tables: Sequence[str]) -> Iterator[None]:
    """On SQLite, copy these tables' rows aside while their parent table is rebuilt (the rebuild's DROP
    deletes them by cascade), then put them back."""
    if not _sqlite():
        yield
        return
    for table in tables:
        op.execute(f"CREATE TEMP TABLE _kept_{table} AS SELECT * FROM {table}")
    yield
    for table in tables:
        op.execute(f"DELETE FROM {table}")
        op.execute(f"INSERT INTO {table} SELECT * FROM _kept_{table}")
        op.execute(f"DROP TABLE _kept_{table}")


def downgrade() -> None:
    """Back to 0003; jobs awaiting review become succeeded (their results are stored)."""
    op.execute("UPDATE jobs SET status = 'succeeded' WHERE status = 'awaiting_review'")
    op.execute("UPDATE batch_counts SET succeeded = succeeded + awaiting_review")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_constraint(op.f("ck_job_events_outcome"), type_="check")
        batch.drop_constraint(op.f("ck_job_events_kind"), type_="check")
        for name in ("actor", "outcome", "kind"):
            batch.drop_column(name)
    if _sqlite():
        _rewrite_sqlite_table("jobs", _in("status", _NEW_STATUSES), _in("status", _OLD_STATUSES), drop=_REDO_FK)
    else:
        op.drop_constraint(op.f("fk_jobs_redo_of_jobs"), "jobs", type_="foreignkey")
        op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
        op.create_check_constraint(op.f("ck_jobs_status"), "jobs", _in("status", _OLD_STATUSES))
    with _dependants_kept(_JOB_DEPENDANTS), op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_review"), type_="check")
        for name in ("cancel_requested_at", "redo_of", "review_note", "review", "mark", "colourize", "output_sha256"):
            batch.drop_column(name)
    op.drop_column("batch_counts", "awaiting_review")
    op.drop_index("uq_batches_tenant_id_idempotency_key", table_name="batches")
    op.drop_column("batches", "idempotency_key")
