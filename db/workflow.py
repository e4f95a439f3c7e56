"""Compound operations of the job system built from the per-table queries: the tenant of the embedded
mode, paging through a whole batch, and idempotent job creation for archive ingestion."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.batches import list_batch_jobs
from db.jobs import create_job, fail_job
from db.models import Job, Reference, Tenant
from db.tenants import create_tenant

__all__ = [
    "SKIPPED_MEMBER",
    "create_failed_job",
    "create_job_once",
    "get_or_create_tenant",
    "iter_batch_jobs",
    "reference_name",
    "stale_pending_references",
]

SKIPPED_MEMBER = "skipped_member"


def get_or_create_tenant(s: Session, name: str) -> Tenant:
    tenant = s.scalar(select(Tenant).where(Tenant.name == name))
    return tenant if tenant is not None else create_tenant(s, name)


def iter_batch_jobs(s: Session, batch_id: str, page: int = 500) -> Iterator[Job]:
    """Every job of a batch in creation order, a page at a time (batches can hold 50,000 photos)."""
    tenant_id = s.scalar(select(Job.tenant_id).where(Job.batch_id == batch_id).limit(1))
    if tenant_id is None:
        return
    cursor = None
    while True:
        jobs, cursor = list_batch_jobs(s, tenant_id, batch_id, cursor=cursor, limit=page)
        yield from jobs
        if not cursor:
            return


def reference_name(s: Session, reference_id: str) -> str | None:
    return s.scalar(select(Reference.name).where(Reference.id == reference_id))


def create_job_once(
    s: Session,
    tenant_id: str,
    batch_id: str,
    input_key: str,
    input_sha256: str,
    input_name: str,
    input_bytes: int,
    options: Mapping[str, Any] | None = None,
) -> Job:
    """Create a batch's job for one archive member unless a redelivered ingest already did."""
    existing = s.scalar(
        select(Job).where(Job.batch_id == batch_id, Job.input_sha256 == input_sha256, Job.input_name == input_name)
    )
    if existing is not None:
        return existing
    return create_job(s, tenant_id, batch_id, input_key, input_sha256, input_name, input_bytes, options)


def create_failed_job(
    s: Session, tenant_id: str, batch_id: str, input_key: str, input_name: str, code: str, message: str
) -> Job:
    """Record an input that never became a photo (a skipped archive member, a refused archive) as a failed
    job of its batch, so the bureau sees it, with its reason, in the status counts and the report."""
    existing = s.scalar(
        select(Job).where(Job.batch_id == batch_id, Job.input_name == input_name, Job.error_code == code)
    )
    if existing is not None:
        return existing
    job = create_job(s, tenant_id, batch_id, input_key, None, input_name, None)
    fail_job(s, job.id, None, code, message)
    return job


def stale_pending_references(s: Session, now: datetime, older_than_s: float, limit: int = 500) -> list[str]:
    """References still waiting for their index task long after upload: the broker may have lost it."""
    cutoff = now - timedelta(seconds=older_than_s)
    stmt = (
        select(Reference.id)
        .where(Reference.status == "pending", Reference.created_at < cutoff)
        .order_by(Reference.created_at)
        .limit(limit)
    )
    return list(s.scalars(stmt))
