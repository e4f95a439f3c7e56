"""A tenant's corpus of colour reference photos and their retrieval descriptors.

A reference is ``pending`` until the ingest worker computes its descriptor (``indexed``) or gives
up (``failed``). Deleting is a soft delete: jobs that used the photo keep pointing at the row, so
their provenance stays intact; the descriptor is dropped so retrieval no longer sees it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    REF_DELETED,
    REF_FAILED,
    REF_INDEXED,
    REF_PENDING,
    REFERENCE_STATUSES,
    InvalidOptions,
    Reference,
    utcnow,
)


def _by_sha(s: Session, tenant_id: str, sha256: str) -> Reference | None:
    return s.scalar(select(Reference).where(Reference.tenant_id == tenant_id, Reference.sha256 == sha256))


def add_reference(s: Session, tenant_id: str, name: str, object_key: str, sha256: str) -> Reference:
    """Register a photo; the same bytes uploaded twice give back the existing row.

    A previously deleted photo uploaded again is revived as ``pending`` so it is indexed afresh; so is
    one that failed, since the upload that brings it back has passed the checks again.
    """
    existing = _by_sha(s, tenant_id, sha256)
    if existing is None:
        ref = Reference(
            tenant_id=tenant_id,
            name=name,
            object_key=object_key,
            sha256=sha256,
            status=REF_PENDING,
            created_at=utcnow(),
        )
        try:
            with s.begin_nested():
                s.add(ref)
            return ref
        except IntegrityError:  # the same photo was added concurrently
            existing = _by_sha(s, tenant_id, sha256)
            if existing is None:
                raise
    if existing.status in (REF_DELETED, REF_FAILED):
        existing.status = REF_PENDING
        existing.name = name
        existing.object_key = object_key
        existing.error = None
        existing.indexed_at = None
        s.flush()
    return existing


def mark_reference_indexed(s: Session, ref_id: str, descriptor_bytes: bytes) -> bool:
    """Store the descriptor; ``False`` if the reference was deleted or failed meanwhile (or does not exist).

    ``failed`` holds until the photo is uploaded again: a restore worker that found the photo unusable
    (not a colour photo) may have marked it so while its index task was still queued, and that task
    must not put it back into the corpus.
    """
    result = s.execute(
        update(Reference)
        .where(Reference.id == ref_id, Reference.status.in_((REF_PENDING, REF_INDEXED)))
        .values(status=REF_INDEXED, descriptor=descriptor_bytes, indexed_at=utcnow(), error=None)
        .execution_options(synchronize_session="fetch")
    )
    return bool(result.rowcount)


def mark_reference_failed(s: Session, ref_id: str, error: str) -> bool:
    """Record why indexing failed; ``False`` if the reference was deleted meanwhile."""
    result = s.execute(
        update(Reference)
        .where(Reference.id == ref_id, Reference.status != REF_DELETED)
        .values(status=REF_FAILED, error=error[:4000], descriptor=None)
        .execution_options(synchronize_session="fetch")
    )
    return bool(result.rowcount)


def list_references(s: Session, tenant_id: str, status: str | None = None) -> list[Reference]:
    """A tenant's references in upload order; deleted ones only when asked for by status."""
    if status is not None and status not in REFERENCE_STATUSES:
        raise InvalidOptions(f"status must be one of {', '.join(REFERENCE_STATUSES)}")
    stmt = select(Reference).where(Reference.tenant_id == tenant_id)
    stmt = stmt.where(Reference.status == status) if status else stmt.where(Reference.status != REF_DELETED)
    return list(s.scalars(stmt.order_by(Reference.created_at, Reference.id)))


def get_reference(
    s: Session, tenant_id: str, ref_id: str, *, include_deleted: bool = False
) -> Reference | None:
    """The tenant's reference, or ``None`` (another tenant's, or deleted unless asked)."""
    ref = s.scalar(select(Reference).where(Reference.id == ref_id, Reference.tenant_id == tenant_id))
    if ref is not None and ref.status == REF_DELETED and not include_deleted:
        return None
    return ref


def get_reference_any_tenant(s: Session, ref_id: str) -> Reference | None:
    """Unscoped lookup for the indexing worker, which receives only an id."""
    return s.get(Reference, ref_id)


def delete_reference(s: Session, tenant_id: str, ref_id: str) -> bool:
    """Soft-delete; ``False`` if there was no such live reference for this tenant."""
    result = s.execute(
        update(Reference)
        .where(Reference.id == ref_id, Reference.tenant_id == tenant_id, Reference.status != REF_DELETED)
        .values(status=REF_DELETED, descriptor=None)
        .execution_options(synchronize_session="fetch")
    )
    return bool(result.rowcount)


def indexed_descriptors(
    s: Session, tenant_id: str, since: datetime | None = None
) -> list[tuple[str, bytes]]:
    """``(id, descriptor)`` of every indexed reference (the retrieval worker's search corpus), or only
    of those indexed at or after ``since`` (its incremental refresh)."""
    stmt = select(Reference.id, Reference.descriptor).where(
        Reference.tenant_id == tenant_id,
        Reference.status == REF_INDEXED,
        Reference.descriptor.is_not(None),
    )
    if since is not None:
        stmt = stmt.where(Reference.indexed_at >= since)
    rows = s.execute(stmt.order_by(Reference.created_at, Reference.id))
    return [(ref_id, bytes(blob)) for ref_id, blob in rows]


__all__ = [
    "add_reference",
    "delete_reference",
    "get_reference",
    "get_reference_any_tenant",
    "indexed_descriptors",
    "list_references",
    "mark_reference_failed",
    "mark_reference_indexed",
]
