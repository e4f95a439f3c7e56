"""Batches: options, submission, progress figures, keyset pagination, cancel and finish."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db import migrate
from db.batches import (
    batch_progress,
    batch_status_counts,
    cancel_batch,
    create_batch,
    finish_batches,
    get_batch,
    list_batch_jobs,
    list_batches,
    submit_batch,
)
from db.jobs import claim_job, complete_job, create_job, fail_job, job_events, retry_job
from db.models import InvalidCursor, InvalidOptions, InvalidTransition, Job, NotFound, utcnow
from db.session import dispose_engine, session_scope
from db.tenants import create_tenant


@pytest.fixture
def sqlite_db(sqlite_url: str):
    migrate.upgrade(sqlite_url)
    yield sqlite_url
    dispose_engine(sqlite_url)


def _batch_with_jobs(url: str, n: int, tenant: str = "acme") -> tuple[str, str, list[str]]:
    with session_scope(url) as s:
        tenant_id = create_tenant(s, tenant).id
        batch_id = create_batch(s, tenant_id, "album", {"reference_mode": "none"}).id
        ids = [create_job(s, tenant_id, batch_id, f"in/{i}", None, f"{i}.tif", 10).id for i in range(n)]
    return tenant_id, batch_id, ids


def test_options_are_validated_and_completed(sqlite_db: str) -> None:
    with session_scope(sqlite_db) as s:
        tenant_id = create_tenant(s, "acme").id
        batch = create_batch(s, tenant_id, "a", {"output_format": "tiff16", "working_size": 512})
        assert batch.options == {
            "reference_mode": "auto",
            "reference_id": None,
            "output_format": "tiff16",
            "working_size": 512,
            "colourize": True,
            "mark": False,
            "review": "none",
        }
        assert batch.status == "open"
        for bad in (
            {"output_format": "gif"},
            {"reference_mode": "manual"},
            {"working_size": 10},
            {"colour": "red"},
        ):
            with pytest.raises(InvalidOptions):
                create_batch(s, tenant_id, "b", bad)
        with pytest.raises(InvalidOptions):
            create_batch(s, tenant_id, "b", {}, webhook_url="ftp://x")
        # Jobs inherit the batch's options.
        job = create_job(s, tenant_id, batch.id, "k", None, None, None)
        assert (job.output_format, job.reference_mode) == ("tiff16", "auto")
        assert [b.id for b in list_batches(s, tenant_id)] == [batch.id]


def test_keyset_pagination_visits_every_job_exactly_once(url: str) -> None:
    tenant_id, batch_id, ids = _batch_with_jobs(url, 23)
    with session_scope(url) as s:
        # Several jobs sharing one timestamp: the id breaks the tie.
        same = utcnow() - timedelta(minutes=5)
        s.execute(update(Job).where(Job.id.in_(ids[5:12])).values(created_at=same))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        with session_scope(url) as s:
            page, cursor = list_batch_jobs(s, tenant_id, batch_id, cursor=cursor, limit=5)
            # Jobs change status between pages; creation order does not move.
            for job in page[:2]:
                claim_job(s, job.id, "w", 5)
        seen.extend(j.id for j in page)
        pages += 1
        if cursor is None:
            break
    assert pages == 5
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    with session_scope(url) as s:
        running, cursor = list_batch_jobs(s, tenant_id, batch_id, status="running", limit=100)
        assert cursor is None and len(running) == 10 and all(j.status == "running" for j in running)
        with pytest.raises(InvalidCursor):
            list_batch_jobs(s, tenant_id, batch_id, cursor="not-a-cursor")


def test_status_counts_and_progress(url: str) -> None:
    tenant_id, batch_id, ids = _batch_with_jobs(url, 10)
    with session_scope(url) as s:
        for job_id in ids[:4]:
            attempt = claim_job(s, job_id, "w", 5).attempt
            assert (
                complete_job(s, job_id, attempt, "o.png")
                if job_id != ids[3]
                else fail_job(s, job_id, attempt, "decode_error", "bad")
            )
        claim_job(s, ids[4], "w", 5)
    with session_scope(url) as s:
        counts = batch_status_counts(s, batch_id)
        assert counts == {"queued": 5, "running": 1, "succeeded": 3, "failed": 1, "cancelled": 0, "awaiting_review": 0}
        progress = batch_progress(s, batch_id)
        # The counters' throughput is the obvious one over the job rows: finished jobs per minute of span.
        ran = [j for j in s.scalars(select(Job).where(Job.batch_id == batch_id)) if j.status in ("succeeded", "failed")]
        span_min = (max(j.finished_at for j in ran) - min(j.started_at for j in ran)).total_seconds() / 60
    assert (progress.total, progress.done) == (10, 4)
    assert progress.done_fraction == pytest.approx(0.4)
    assert progress.throughput_per_min == pytest.approx(4 / span_min)
    assert progress.eta_s == pytest.approx(6 / progress.throughput_per_min * 60)
    with session_scope(url) as s:
        empty = create_batch(s, tenant_id, "empty").id
        p = batch_progress(s, empty)
    assert (p.total, p.done_fraction, p.throughput_per_min, p.eta_s) == (0, 0.0, None, 0.0)


def test_cancel_batch_cancels_queued_jobs_with_events(url: str) -> None:
    tenant_id, batch_id, ids = _batch_with_jobs(url, 4)
    other_id, _, _ = _batch_with_jobs(url, 0, tenant="other")
    with session_scope(url) as s:
        running = claim_job(s, ids[0], "w", 5).attempt
    with session_scope(url) as s, pytest.raises(NotFound):
        cancel_batch(s, other_id, batch_id)
    with session_scope(url) as s:
        assert cancel_batch(s, tenant_id, batch_id) == 3
        assert get_batch(s, tenant_id, batch_id).status == "cancelled"
        assert batch_status_counts(s, batch_id)["cancelled"] == 3
        for job_id in ids[1:]:
            assert [(e.from_status, e.to_status) for e in job_events(s, job_id)][-1] == (
                "queued",
                "cancelled",
            )
        # The running job is left to finish.
        assert complete_job(s, ids[0], running, "o.png")
        assert cancel_batch(s, tenant_id, batch_id) == 0


def test_finish_batches_finishes_each_submitted_batch_once(url: str) -> None:
    tenant_id, batch_id, ids = _batch_with_jobs(url, 2)
    with session_scope(url) as s:
        open_batch = create_batch(s, tenant_id, "still open").id
        submitted = submit_batch(s, tenant_id, batch_id)
        assert (submitted.status, submitted.total_jobs) == ("submitted", 2)
        with pytest.raises(InvalidTransition):
            submit_batch(s, tenant_id, batch_id)
        assert finish_batches(s) == []  # jobs still queued
        for job_id in ids:
            claim = claim_job(s, job_id, "w", 5)
            if job_id == ids[0]:
                assert complete_job(s, job_id, claim.attempt, "o.png")
            else:
                assert fail_job(s, job_id, claim.attempt, "decode_error", "bad")
    with session_scope(url) as s:
        finished = finish_batches(s)
        assert [b.id for b in finished] == [batch_id]
        assert finished[0].status == "finished" and finished[0].finished_at is not None
        assert finish_batches(s) == []
        assert get_batch(s, tenant_id, open_batch).status == "open"
        # Retrying a failed job reopens the batch; it finishes (and is reported) again later.
        retry_job(s, tenant_id, ids[1])
        assert get_batch(s, tenant_id, batch_id).status == "submitted"
        assert finish_batches(s) == []
        assert complete_job(s, ids[1], claim_job(s, ids[1], "w", 5).attempt, "o.png")
        assert [b.id for b in finish_batches(s)] == [batch_id]
