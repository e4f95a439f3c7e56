"""Batches: a tenant's album of photos processed with one set of options, and its progress.

A batch is ``open`` while jobs are added, ``submitted`` once complete (it then finishes by itself
when every job is terminal), or ``cancelled`` (its ``finished_at`` is set, and its report written,
once the jobs that were running when it was cancelled have ended). Job listing uses keyset pagination on
``(created_at, id)`` so a 50,000-photo batch pages in constant time and no job is skipped or seen
twice while other jobs change status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.counts import counts_of, note_move, status_counts
from db.jobs import check_reference_owner, normalize_options, record_events
from db.models import (
    ARCHIVE_PENDING,
    BATCH_CANCELLED,
    BATCH_FINISHED,
    BATCH_OPEN,
    BATCH_SUBMITTED,
    EVENT_CANCEL,
    JOB_CANCELLED,
    JOB_QUEUED,
    JOB_STATUSES,
    JOB_TERMINAL,
    JOB_UNSETTLED,
    OUTCOME_SUCCESS,
    REVIEW_STATES,
    Archive,
    Batch,
    BatchCounts,
    IdempotencyKeyReused,
    InvalidOptions,
    InvalidTransition,
    Job,
    NotFound,
    new_id,
    utcnow,
)
from db.paging import decode_cursor, encode_cursor

MAX_PAGE = 1000


@dataclass(frozen=True)
class BatchProgress:
    """What a client polling a batch wants to see.

    ``throughput_per_min`` is measured over the jobs that already finished (count divided by the
    span from the first start to the last finish); ``eta_s`` extrapolates it to the jobs left and
    is ``None`` until there is a rate to extrapolate.
    """

    counts: dict[str, int]
    total: int
    done: int
    done_fraction: float
    throughput_per_min: float | None
    eta_s: float | None


def create_batch(
    s: Session,
    tenant_id: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
) -> Batch:
    """A new open batch; options are validated and completed with defaults.

    With ``idempotency_key`` use :func:`create_batch_once` instead, which answers a repeated key with
    the batch its first request made.
    """
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidOptions("batch name must be 1 to 200 characters")
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        raise InvalidOptions("webhook_url must be an http(s) URL")
    if "\x00" in name or "\x00" in (webhook_url or ""):
        raise InvalidOptions("batch name and webhook_url cannot hold the NUL character (PostgreSQL text cannot)")
    opts = normalize_options(options)
    check_reference_owner(s, tenant_id, opts)
    batch = Batch(
        id=new_id(),
        tenant_id=tenant_id,
        name=name,
        options=opts,
        status=BATCH_OPEN,
        webhook_url=webhook_url,
        total_jobs=0,
        created_at=utcnow(),
        idempotency_key=idempotency_key,
    )
    s.add(batch)
    s.add(BatchCounts(batch_id=batch.id))
    s.flush()
    return batch


def create_batch_once(
    s: Session,
    tenant_id: str,
    idempotency_key: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    webhook_url: str | None = None,
) -> tuple[Batch, bool]:
    """The batch a tenant's ``Idempotency-Key`` names, created now if it is new; ``(batch, created)``.

    Two requests with one key racing both try the insert: the unique ``(tenant_id, idempotency_key)``
    lets one win, and the other (its savepoint rolled back) reads the winner's batch. A key reused for a
    different name, options or webhook raises ``IdempotencyKeyReused``.
    """
    opts = normalize_options(options)
    existing = _batch_by_key(s, tenant_id, idempotency_key)
    if existing is None:
        try:
            with s.begin_nested():
                return create_batch(s, tenant_id, name, opts, webhook_url, idempotency_key), True
        except IntegrityError:
            existing = _batch_by_key(s, tenant_id, idempotency_key)
            if existing is None:
                raise
    if (existing.name, dict(existing.options or {}), existing.webhook_url) != ((name or "").strip(), opts, webhook_url):
        raise IdempotencyKeyReused(
            f"Idempotency-Key {idempotency_key!r} was used for batch {existing.id} with another name, options or "
            "webhook_url; send a new key for a new batch"
        )
    return existing, False


def _batch_by_key(s: Session, tenant_id: str, key: str) -> Batch | None:
    return s.scalar(select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
                    .execution_options(populate_existing=True))


def get_batch(s: Session, tenant_id: str, batch_id: str) -> Batch | None:
    """The batch if it belongs to ``tenant_id`` (another tenant's batch answers ``None``)."""
    return s.scalar(select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))


def get_batch_any_tenant(s: Session, batch_id: str) -> Batch | None:
    """Unscoped lookup for workers (ingest, reports, webhooks), which receive only an id."""
    return s.get(Batch, batch_id)


def list_batches(s: Session, tenant_id: str, limit: int = 100) -> list[Batch]:
    """A tenant's batches, newest first."""
    stmt = (
        select(Batch)
        .where(Batch.tenant_id == tenant_id)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    return list(s.scalars(stmt))


def submit_batch(s: Session, tenant_id: str, batch_id: str) -> Batch:
    """Close a batch to new jobs: open → submitted, ``total_jobs`` fixed at the current count.

    Submit only after every job of the batch exists, or :func:`finish_batches` may finish it early.
    """
    total = s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id)) or 0
    result = s.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.tenant_id == tenant_id, Batch.status == BATCH_OPEN)
        .values(status=BATCH_SUBMITTED, submitted_at=utcnow(), total_jobs=total)
        .execution_options(synchronize_session="fetch")
    )
    batch = get_batch(s, tenant_id, batch_id)
    if batch is None:
        raise NotFound(f"batch {batch_id} not found")
    if not result.rowcount:
        raise InvalidTransition(f"batch {batch_id} is {batch.status}; only open batches can be submitted")
    return batch


def set_batch_report(s: Session, batch_id: str, report_key: str) -> None:
    """Remember where the batch's report was written."""
    s.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(report_key=report_key)
        .execution_options(synchronize_session="fetch")
    )


def batch_status_counts(s: Session, batch_id: str) -> dict[str, int]:
    """Job counts per status for one batch, every status present (one row, ``db.counts``)."""
    return status_counts(counts_of(s, [batch_id]).get(batch_id))


def batch_progress(s: Session, batch_id: str) -> BatchProgress:
    row = counts_of(s, [batch_id]).get(batch_id)
    counts = status_counts(row)
    total = sum(counts.values())
    done = sum(counts[st] for st in JOB_TERMINAL)
    throughput = None
    if row is not None and row.ran and row.first_started_at is not None and row.last_finished_at is not None:
        span_min = (row.last_finished_at - row.first_started_at).total_seconds() / 60.0
        if span_min > 0:
            throughput = row.ran / span_min
    remaining = total - done
    if remaining == 0:
        eta = 0.0
    elif throughput:
        eta = remaining / throughput * 60.0
    else:
        eta = None
    return BatchProgress(
        counts=counts,
        total=total,
        done=done,
        done_fraction=(done / total) if total else 0.0,
        throughput_per_min=throughput,
        eta_s=eta,
    )


def list_batch_jobs(
    s: Session,
    tenant_id: str,
    batch_id: str,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
    review: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of a batch's jobs in creation order, and the cursor of the next page (or ``None``);
    ``status`` and ``review`` (``pending`` lists what waits for a person) narrow it."""
    if status is not None and status not in JOB_STATUSES:
        raise InvalidOptions(f"status must be one of {', '.join(JOB_STATUSES)}")
    if review is not None and review not in REVIEW_STATES:
        raise InvalidOptions(f"review must be one of {', '.join(REVIEW_STATES)}")
    limit = max(1, min(limit, MAX_PAGE))
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.batch_id == batch_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if review is not None:
        stmt = stmt.where(Job.review == review)
    if cursor:
        after_at, after_id = decode_cursor(cursor)
        # The redundant ``>=`` lets both databases seek the (batch_id, created_at, id) index to the
        # cursor instead of scanning the batch from its start on every page.
        stmt = stmt.where(
            Job.created_at >= after_at,
            or_(Job.created_at > after_at, and_(Job.created_at == after_at, Job.id > after_id)),
        )
    jobs = list(s.scalars(stmt.order_by(Job.created_at, Job.id).limit(limit + 1)))
    if len(jobs) <= limit:
        return jobs, None
    jobs = jobs[:limit]
    return jobs, encode_cursor(jobs[-1].created_at, jobs[-1].id)


def cancel_batch(s: Session, tenant_id: str, batch_id: str, *, actor: str | None = None) -> int:
    """Cancel a batch: its queued jobs become cancelled (running ones finish); returns how many.

    ``finished_at`` stays empty until the running jobs and pending archives have ended too:
    :func:`finish_batches` then sets it, once, and the batch gets its report of what finished and what
    was cancelled.
    """
    if get_batch(s, tenant_id, batch_id) is None:
        raise NotFound(f"batch {batch_id} not found")
    now = utcnow()
    ids = list(
        s.scalars(
            update(Job)
            .where(Job.batch_id == batch_id, Job.tenant_id == tenant_id, Job.status == JOB_QUEUED)
            .values(status=JOB_CANCELLED, finished_at=now, updated_at=now)
            .returning(Job.id)
            .execution_options(synchronize_session="fetch")
        )
    )
    record_events(s, ids, JOB_QUEUED, JOB_CANCELLED, detail="batch cancelled", at=now, actor=actor)
    record_events(s, ids, JOB_QUEUED, JOB_CANCELLED, detail="batch cancelled before the job ran", at=now,
                  kind=EVENT_CANCEL, outcome=OUTCOME_SUCCESS, actor=actor)
    note_move(s, batch_id, JOB_QUEUED, JOB_CANCELLED, len(ids))
    s.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_((BATCH_OPEN, BATCH_SUBMITTED)))
        .values(status=BATCH_CANCELLED)
        .execution_options(synchronize_session="fetch")
    )
    return len(ids)


def finish_batches(s: Session) -> list[Batch]:
    """Finish the batches that nothing can change any more; returns those this call finished.

    A submitted batch with no active job, none awaiting review and no archive left to unpack becomes
    ``finished``; a cancelled
    batch whose running jobs and pending archives have all ended keeps its status and gets its
    ``finished_at``. Either way the caller writes the report and calls the webhook. One compare-and-set
    statement per kind, so two maintenance runs never both finish (and both notify) the same batch.
    """
    active = exists().where(Job.batch_id == Batch.id, Job.status.in_(JOB_UNSETTLED))
    unpacking = exists().where(Archive.batch_id == Batch.id, Archive.status == ARCHIVE_PENDING)
    now = utcnow()
    ids = list(
        s.scalars(
            update(Batch)
            .where(Batch.status == BATCH_SUBMITTED, ~active, ~unpacking)
            .values(status=BATCH_FINISHED, finished_at=now)
            .returning(Batch.id)
            .execution_options(synchronize_session=False)
        )
    )
    ids += s.scalars(
        update(Batch)
        .where(Batch.status == BATCH_CANCELLED, Batch.finished_at.is_(None), ~active, ~unpacking)
        .values(finished_at=now)
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    )
    if not ids:
        return []
    return list(
        s.scalars(
            select(Batch)
            .where(Batch.id.in_(ids))
            .order_by(Batch.created_at)
            .execution_options(populate_existing=True)
        )
    )


__all__ = [
    "BatchProgress",
    "batch_progress",
    "batch_status_counts",
    "cancel_batch",
    "create_batch",
    "create_batch_once",
    "finish_batches",
    "get_batch",
    "get_batch_any_tenant",
    "list_batch_jobs",
    "list_batches",
    "set_batch_report",
    "submit_batch",
]
