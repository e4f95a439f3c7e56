"""A tenant's reference corpus: de-duplication by hash, indexing, soft delete."""

from __future__ import annotations

import pytest

from db.batches import create_batch
from db.jobs import create_job
from db.models import InvalidOptions, NotFound
from db.references import (
    add_reference,
    delete_reference,
    get_reference,
    get_reference_any_tenant,
    indexed_descriptors,
    list_references,
    mark_reference_failed,
    mark_reference_indexed,
)
from db.session import session_scope
from db.tenants import create_tenant


def test_reference_lifecycle(url: str) -> None:
    blob = bytes(range(256)) * 4
    with session_scope(url) as s:
        acme, other = create_tenant(s, "acme").id, create_tenant(s, "other").id
        a = add_reference(s, acme, "beach.jpg", "refs/a", "a" * 64)
        b = add_reference(s, acme, "forest.jpg", "refs/b", "b" * 64)
        assert add_reference(s, acme, "beach-copy.jpg", "refs/a2", "a" * 64).id == a.id  # same bytes
        theirs = add_reference(s, other, "beach.jpg", "refs/o", "a" * 64)
        assert theirs.id != a.id
        assert (a.status, a.descriptor) == ("pending", None)
    with session_scope(url) as s:
        assert mark_reference_indexed(s, a.id, blob)
        assert mark_reference_failed(s, b.id, "not an image")
    with session_scope(url) as s:
        assert indexed_descriptors(s, acme) == [(a.id, blob)]
        assert indexed_descriptors(s, other) == []
        assert [r.id for r in list_references(s, acme)] == [a.id, b.id]
        assert [r.id for r in list_references(s, acme, status="failed")] == [b.id]
        assert get_reference(s, acme, b.id).error == "not an image"
        assert get_reference(s, other, a.id) is None
        with pytest.raises(InvalidOptions):
            list_references(s, acme, status="bogus")
    with session_scope(url) as s:
        assert not delete_reference(s, other, a.id)
        assert delete_reference(s, acme, a.id)
        assert not delete_reference(s, acme, a.id)
        assert not mark_reference_indexed(s, a.id, blob)  # a late indexer cannot resurrect it
    with session_scope(url) as s:
        assert indexed_descriptors(s, acme) == []
        assert get_reference(s, acme, a.id) is None
        assert get_reference(s, acme, a.id, include_deleted=True).descriptor is None
        assert [r.id for r in list_references(s, acme)] == [b.id]
        assert get_reference_any_tenant(s, a.id).status == "deleted"
        revived = add_reference(s, acme, "beach.jpg", "refs/a3", "a" * 64)
        assert (revived.id, revived.status, revived.object_key) == (a.id, "pending", "refs/a3")


def test_a_manual_reference_must_be_the_tenants_own(url: str) -> None:
    with session_scope(url) as s:
        acme, other = create_tenant(s, "acme").id, create_tenant(s, "other").id
        mine = add_reference(s, acme, "mine.jpg", "refs/m", "m" * 64).id
        theirs = add_reference(s, other, "theirs.jpg", "refs/t", "t" * 64).id
        batch = create_batch(s, acme, "album", {"reference_mode": "manual", "reference_id": mine})
        assert create_job(s, acme, batch.id, "in/1", None, None, None).reference_id == mine
        with pytest.raises(NotFound):
            create_batch(s, acme, "album", {"reference_mode": "manual", "reference_id": theirs})
        with pytest.raises(NotFound):
            create_job(
                s, acme, None, "in/2", None, None, None, {"reference_mode": "manual", "reference_id": theirs}
            )
        with pytest.raises(InvalidOptions):
            create_batch(s, acme, "album", {"reference_mode": "none", "reference_id": mine})


def test_stale_pending_references_are_found_for_reindexing(url: str) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Reference, utcnow
    from db.workflow import stale_pending_references

    with session_scope(url) as s:
        tenant = create_tenant(s, "stale")
        old = add_reference(s, tenant.id, "old.jpg", "t/references/a.jpg", "a" * 64).id
        new = add_reference(s, tenant.id, "new.jpg", "t/references/b.jpg", "b" * 64).id
        done = add_reference(s, tenant.id, "done.jpg", "t/references/c.jpg", "c" * 64).id
        s.execute(update(Reference).where(Reference.id.in_([old, done])).values(created_at=utcnow() - timedelta(hours=2)))
        mark_reference_indexed(s, done, b"\x00\x01")
    with session_scope(url) as s:
        assert stale_pending_references(s, utcnow(), older_than_s=600) == [old]
        assert set(stale_pending_references(s, utcnow() + timedelta(seconds=1), older_than_s=0.0)) == {old, new}


def test_a_failed_reference_stays_out_of_the_corpus_until_uploaded_again(url: str) -> None:
    """A restore worker marks a grey photo ``failed`` while its index task may still be queued."""
    blob = bytes(range(256))
    with session_scope(url) as s:
        tenant = create_tenant(s, "grey").id
        grey = add_reference(s, tenant, "grey.jpg", "refs/g", "g" * 64).id
    with session_scope(url) as s:
        assert mark_reference_failed(s, grey, "reference_not_colour: not a colour photo")
        assert not mark_reference_indexed(s, grey, blob)  # the late index task cannot put it back
    with session_scope(url) as s:
        assert indexed_descriptors(s, tenant) == []
        assert get_reference(s, tenant, grey).status == "failed"
        again = add_reference(s, tenant, "grey-rescanned.jpg", "refs/g2", "g" * 64)
        assert (again.id, again.status, again.error, again.object_key) == (grey, "pending", None, "refs/g2")
    with session_scope(url) as s:
        assert mark_reference_indexed(s, grey, blob)
        assert indexed_descriptors(s, tenant) == [(grey, blob)]
