"""Archives a batch is waiting for, and a heartbeat on running jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05

An accepted zip is a row until its members are jobs, so a batch cannot finish (or be lost) while an
archive is pending, and the maintenance task can re-send an ingest the broker lost. Workers touch
``jobs.heartbeat_at`` while they run a job, so a killed worker's job is found within minutes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "archives",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("object_key", sa.String(length=1024), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_jobs", sa.Integer(), nullable=False),
        sa.Column("refused_members", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("sent_at"),
        _ts("ingested_at"),
        sa.CheckConstraint("status IN ('pending', 'ingested', 'failed')", name=op.f("ck_archives_status")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_archives_batch_id_batches"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_archives_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archives")),
    )
    op.create_index("ix_archives_batch_id_status", "archives", ["batch_id", "status"])
    op.create_index("ix_archives_status_sent_at", "archives", ["status", "sent_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(_ts("heartbeat_at"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_at")
    op.drop_index("ix_archives_status_sent_at", table_name="archives")
    op.drop_index("ix_archives_batch_id_status", table_name="archives")
    op.drop_table("archives")
