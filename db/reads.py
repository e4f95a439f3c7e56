"""Read-only queries for listings and figures: a page of a tenant's batches, per-batch counts in one
pass, jobs and references fetched by a list of ids, reference names for a job's candidates, the job
duration histogram for ``/metrics`` and the readiness ping.

Nothing here changes a row, which is why it sits apart from the per-resource modules that own the
state machines. Each function takes a ``Session`` and leaves the transaction to the caller; callers
reach them through ``db.repository``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import and_, case, func, or_, select, text
from sqlalchemy.orm import Session

from db.counts import counts_of, status_counts
from db.models import JOB_SUCCEEDED, Batch, Job, Reference
from db.paging import decode_cursor, encode_cursor

MAX_PAGE = 1000


def ping(s: Session) -> None:
    """``SELECT 1``: the database answers (readiness probe)."""
    s.execute(text("SELECT 1"))


# --- batches ----------------------------------------------------------------------------------


def list_batches_page(
    s: Session, tenant_id: str, cursor: str | None = None, limit: int = 50
) -> tuple[list[Batch], str | None]:
    """One page of a tenant's batches, newest first, and the cursor of the next page (or ``None``).

    Keyset pagination on ``(created_at, id)`` descending (served by ``ix_batches_tenant_id_created_at``),
    so a batch created while a client pages is never skipped or seen twice.
    """
    limit = max(1, min(limit, MAX_PAGE))
    stmt = select(Batch).where(Batch.tenant_id == tenant_id)
    if cursor:
        before_at, before_id = decode_cursor(cursor)
        stmt = stmt.where(
            or_(Batch.created_at < before_at, and_(Batch.created_at == before_at, Batch.id < before_id))
        )
    rows = list(s.scalars(stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)


def status_counts_for_batches(s: Session, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Job counts per status for many batches, from their counter rows; every status present per batch."""
    rows = counts_of(s, list(batch_ids))
    return {batch_id: status_counts(rows.get(batch_id)) for batch_id in batch_ids}


def get_jobs(s: Session, tenant_id: str, job_ids: Sequence[str]) -> list[Job]:
    """The tenant's jobs among ``job_ids``, in the order given (missing or foreign ids are left out)."""
    if not job_ids:
        return []
    rows = {j.id: j for j in s.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.id.in_(list(job_ids))))}
    return [rows[j] for j in job_ids if j in rows]


# --- references -------------------------------------------------------------------------------


def reference_names(s: Session, tenant_id: str, ref_ids: Iterable[str | None]) -> dict[str, str]:
    """Names of the tenant's references among ``ref_ids`` (deleted ones included: provenance)."""
    ids = sorted({r for r in ref_ids if r})
    if not ids:
        return {}
    rows = s.execute(select(Reference.id, Reference.name).where(Reference.tenant_id == tenant_id, Reference.id.in_(ids)))
    return {ref_id: name for ref_id, name in rows}


def get_references(s: Session, tenant_id: str, ref_ids: Sequence[str]) -> list[Reference]:
    """The tenant's references among ``ref_ids``, in the order given."""
    if not ref_ids:
        return []
    rows = {
        r.id: r
        for r in s.scalars(select(Reference).where(Reference.tenant_id == tenant_id, Reference.id.in_(list(ref_ids))))
    }
    return [rows[r] for r in ref_ids if r in rows]


# --- metrics ----------------------------------------------------------------------------------


def job_duration_histogram(s: Session, bounds: Sequence[float]) -> tuple[list[int], int, float]:
    """Cumulative counts of succeeded jobs' durations at each upper bound, plus total count and sum.

    Computed in the database so the histogram covers every worker process on every machine (the
    API never sees a job finish).
    """
    bounds = sorted(float(b) for b in bounds)
    columns = [func.coalesce(func.sum(case((Job.duration_s <= b, 1), else_=0)), 0) for b in bounds]
    row = s.execute(
        select(*columns, func.count(), func.coalesce(func.sum(Job.duration_s), 0.0)).where(
            Job.status == JOB_SUCCEEDED, Job.duration_s.is_not(None)
        )
    ).one()
    counts = [int(v) for v in row[: len(bounds)]]
    return counts, int(row[len(bounds)]), float(row[len(bounds) + 1])


__all__ = [
    "get_jobs",
    "get_references",
    "job_duration_histogram",
    "list_batches_page",
    "ping",
    "reference_names",
    "status_counts_for_batches",
]
