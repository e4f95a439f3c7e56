"""Initial schema: tenants, API keys, batches, references, jobs and their results and events.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Self-contained on purpose (no imports from ``db.models``): a migration describes the schema as it
was at this revision, whatever the models say later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id(name: str = "id", *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=36), nullable=nullable)


def _ts(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "tenants",
        _id(),
        sa.Column("name", sa.String(length=200), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )

    op.create_table(
        "api_keys",
        _id(),
        _id("tenant_id"),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        _ts("created_at", nullable=False),
        _ts("last_used_at"),
        _ts("revoked_at"),
        _fk("api_keys", "tenant_id", "tenants", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])

    op.create_table(
        "batches",
        _id(),
        _id("tenant_id"),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("webhook_url", sa.String(length=2000), nullable=True),
        sa.Column("total_jobs", sa.Integer(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("submitted_at"),
        _ts("finished_at"),
        sa.Column("report_key", sa.String(length=1024), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'submitted', 'finished', 'cancelled')", name=op.f("ck_batches_status")
        ),
        _fk("batches", "tenant_id", "tenants", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_index("ix_batches_tenant_id_created_at", "batches", ["tenant_id", "created_at"])

    op.create_table(
        "references",
        _id(),
        _id("tenant_id"),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("object_key", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("descriptor", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("indexed_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'indexed', 'failed', 'deleted')", name=op.f("ck_references_status")
        ),
        _fk("references", "tenant_id", "tenants", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_references")),
        sa.UniqueConstraint("tenant_id", "sha256", name=op.f("uq_references_tenant_id_sha256")),
    )

    op.create_table(
        "jobs",
        _id(),
        _id("tenant_id"),
        _id("batch_id", nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("input_key", sa.String(length=1024), nullable=False),
        sa.Column("input_sha256", sa.String(length=64), nullable=True),
        sa.Column("input_name", sa.String(length=500), nullable=True),
        sa.Column("input_bytes", sa.BigInteger(), nullable=True),
        sa.Column("output_key", sa.String(length=1024), nullable=True),
        sa.Column("output_format", sa.String(length=16), nullable=False),
        sa.Column("reference_mode", sa.String(length=16), nullable=False),
        _id("reference_id", nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=True),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("queued_at"),
        _ts("sent_at"),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("duration_s", sa.Float(), nullable=True),
        _ts("updated_at", nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_jobs_status")
        ),
        _fk("jobs", "tenant_id", "tenants", "CASCADE"),
        _fk("jobs", "batch_id", "batches", "CASCADE"),
        _fk("jobs", "reference_id", "references", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_batch_id_status", "jobs", ["batch_id", "status"])
    op.create_index("ix_jobs_status_sent_at", "jobs", ["status", "sent_at"])
    op.create_index("ix_jobs_tenant_id_created_at", "jobs", ["tenant_id", "created_at"])
    op.create_index("ix_jobs_batch_id_created_at_id", "jobs", ["batch_id", "created_at", "id"])
    op.create_index(
        "ix_jobs_tenant_id_status_sent_at_created_at",
        "jobs",
        ["tenant_id", "status", "sent_at", "created_at"],
    )

    op.create_table(
        "job_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        _id("job_id"),
        _ts("at", nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        _fk("job_events", "job_id", "jobs", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index(op.f("ix_job_events_job_id"), "job_events", ["job_id"])

    op.create_table(
        "job_references",
        _id(),
        _id("job_id"),
        _id("reference_id", nullable=True),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("total", sa.Float(), nullable=True),
        sa.Column("texture", sa.Float(), nullable=True),
        sa.Column("structure", sa.Float(), nullable=True),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "source IN ('retrieval', 'manual', 'fallback')", name=op.f("ck_job_references_source")
        ),
        _fk("job_references", "job_id", "jobs", "CASCADE"),
        _fk("job_references", "reference_id", "references", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_references")),
        sa.UniqueConstraint("job_id", "rank", name=op.f("uq_job_references_job_id_rank")),
    )

    op.create_table(
        "quality_metrics",
        _id("job_id"),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        _fk("quality_metrics", "job_id", "jobs", "CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name", name=op.f("pk_quality_metrics")),
    )


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes and constraints with it.
    for table in (
        "quality_metrics",
        "job_references",
        "job_events",
        "jobs",
        "references",
        "batches",
        "api_keys",
    ):
        op.drop_table(table)
    op.drop_table("tenants")
