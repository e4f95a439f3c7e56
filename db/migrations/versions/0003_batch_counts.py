"""Job counts per batch, kept as jobs change state, so a status poll costs the same at any batch size.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

Existing batches are counted once here from their jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    op.create_table(
        "batch_counts",
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in (*_STATUSES, "ran")),
        sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_batch_counts_batch_id_batches"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_batch_counts")),
    )
    per_status = ", ".join(f"SUM(CASE WHEN j.status = '{st}' THEN 1 ELSE 0 END)" for st in _STATUSES)
    ran = ("j.status IN ('succeeded', 'failed') AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL")
    op.execute(
        "INSERT INTO batch_counts (batch_id, queued, running, succeeded, failed, cancelled, ran, "
        "first_started_at, last_finished_at) "
        f"SELECT b.id, {per_status}, SUM(CASE WHEN {ran} THEN 1 ELSE 0 END), "
        f"MIN(CASE WHEN {ran} THEN j.started_at END), MAX(CASE WHEN {ran} THEN j.finished_at END) "
        "FROM batches b JOIN jobs j ON j.batch_id = b.id GROUP BY b.id"
    )
    op.execute(
        "INSERT INTO batch_counts (batch_id, queued, running, succeeded, failed, cancelled, ran) "
        "SELECT b.id, 0, 0, 0, 0, 0, 0 FROM batches b "
        "WHERE NOT EXISTS (SELECT 1 FROM batch_counts c WHERE c.batch_id = b.id)"
    )


def downgrade() -> None:
    op.drop_table("batch_counts")
