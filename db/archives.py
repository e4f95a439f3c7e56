"""Archives: zips accepted into a batch and not yet unpacked.

An archive answered ``202`` is a row before its ingest task is sent, so nothing the client was told
was accepted can vanish: a batch cannot finish while one of its archives is pending, and the
maintenance task re-sends an ingest the broker lost. Archives may be added to an open batch only;
one accepted before the batch was submitted still yields its jobs afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import (
    ARCHIVE_FAILED,
    ARCHIVE_INGESTED,
    ARCHIVE_PENDING,
    BATCH_OPEN,
    Archive,
    Batch,
    InvalidTransition,
    Job,
    NotFound,
    utcnow,
)


def lock_open_batch(s: Session, tenant_id: str, batch_id: str, *, exclusive: bool = False) -> Batch:
    """The batch, locked until commit, if it still takes uploads.

    Uploads take a share lock and submit an exclusive one (two submits sharing a lock would deadlock
    on their updates), so whatever an upload adds is counted by the submit that follows it; raises
    ``NotFound`` or ``InvalidTransition``.
    """
    batch = s.scalar(
        select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id)
        .with_for_update(read=not exclusive)
    )
    if batch is None:
        raise NotFound(f"batch {batch_id} not found")
    if batch.status != BATCH_OPEN:
        raise InvalidTransition(f"batch is {batch.status}; only open batches take new photos")
    return batch


def add_archive(s: Session, tenant_id: str, batch_id: str, name: str, object_key: str,
                size: int | None) -> Archive:
    """Record an archive stored at ``object_key`` as pending in an open batch."""
    lock_open_batch(s, tenant_id, batch_id)
    archive = Archive(tenant_id=tenant_id, batch_id=batch_id, name=name, object_key=object_key, bytes=size,
                      status=ARCHIVE_PENDING, created_jobs=0, refused_members=0, created_at=utcnow())
    s.add(archive)
    s.flush()
    return archive


def get_archive_any_tenant(s: Session, archive_id: str) -> Archive | None:
    return s.get(Archive, archive_id)


def list_batch_archives(s: Session, batch_id: str) -> list[Archive]:
    return list(s.scalars(select(Archive).where(Archive.batch_id == batch_id).order_by(Archive.created_at)))


def mark_archives_sent(s: Session, archive_ids: Sequence[str]) -> None:
    """The broker took the ingest tasks of these archives (called after it did, never before)."""
    if archive_ids:
        s.execute(update(Archive).where(Archive.id.in_(list(archive_ids)), Archive.status == ARCHIVE_PENDING)
                  .values(sent_at=utcnow()).execution_options(synchronize_session=False))


def forget_unsent_archive(s: Session, archive_id: str) -> bool:
    """Drop an archive whose ingest task never reached the broker (the client was answered 503)."""
    result = s.execute(delete(Archive).where(Archive.id == archive_id, Archive.status == ARCHIVE_PENDING,
                                             Archive.sent_at.is_(None)))
    return bool(result.rowcount)


def finish_archive(s: Session, archive_id: str, created: int, refused: int,
                   error_code: str | None = None, error_message: str | None = None) -> bool:
    """pending → ingested (or failed, with the reason); a submitted batch's ``total_jobs`` is recounted.

    Compare-and-set, so a redelivered ingest that finishes second changes nothing.
    """
    archive = s.get(Archive, archive_id)
    if archive is None:
        return False
    result = s.execute(
        update(Archive)
        .where(Archive.id == archive_id, Archive.status == ARCHIVE_PENDING)
        .values(status=ARCHIVE_FAILED if error_code else ARCHIVE_INGESTED, created_jobs=created,
                refused_members=refused, error_code=error_code, error_message=error_message,
                ingested_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    total = select(func.count()).select_from(Job).where(Job.batch_id == archive.batch_id).scalar_subquery()
    s.execute(update(Batch).where(Batch.id == archive.batch_id, Batch.status != BATCH_OPEN)
              .values(total_jobs=total).execution_options(synchronize_session=False))
    return bool(result.rowcount)


def pending_archive_count(s: Session, batch_id: str) -> int:
    return s.scalar(select(func.count()).select_from(Archive)
                    .where(Archive.batch_id == batch_id, Archive.status == ARCHIVE_PENDING)) or 0


def lock_archive_for_ingest(s: Session, archive_id: str) -> tuple[Archive, Batch] | None:
    """The pending archive, locked until commit, and its batch; ``None`` when there is nothing to ingest.

    Two deliveries of one ingest task (a redelivery while the first still runs) take turns member by
    member, so each sees the jobs the other committed and none is created twice.
    """
    archive = s.scalar(select(Archive).where(Archive.id == archive_id).with_for_update())
    if archive is None or archive.status != ARCHIVE_PENDING:
        return None
    return archive, s.get(Batch, archive.batch_id)


def pending_archive_counts(s: Session, batch_ids: Sequence[str]) -> dict[str, int]:
    """Pending archives per batch, for a page of batches in one query."""
    if not batch_ids:
        return {}
    return dict(s.execute(
        select(Archive.batch_id, func.count())
        .where(Archive.batch_id.in_(list(batch_ids)), Archive.status == ARCHIVE_PENDING)
        .group_by(Archive.batch_id)
    ).all())


def archives_to_resend(s: Session, now: datetime, sent_before_s: float, unsent_grace_s: float = 30.0,
                       limit: int = 100) -> list[str]:
    """Pending archives whose ingest was never sent (past a grace for the request sending it now), or
    sent long ago without finishing."""
    return list(s.scalars(
        select(Archive.id)
        .where(Archive.status == ARCHIVE_PENDING,
               or_(and_(Archive.sent_at.is_(None), Archive.created_at < now - timedelta(seconds=unsent_grace_s)),
                   Archive.sent_at < now - timedelta(seconds=sent_before_s)))
        .order_by(Archive.created_at)
        .limit(limit)
    ))


__all__ = [
    "add_archive",
    "archives_to_resend",
    "finish_archive",
    "forget_unsent_archive",
    "get_archive_any_tenant",
    "list_batch_archives",
    "lock_archive_for_ingest",
    "lock_open_batch",
    "mark_archives_sent",
    "pending_archive_count",
    "pending_archive_counts",
]
