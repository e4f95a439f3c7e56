"""Batch counters against the obvious answer: after any mix of transitions, and with many workers
finishing jobs of one batch at the same moment, the counter row equals COUNT(*) over the job rows."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import func, select

from db import migrate
from db.batches import batch_progress, batch_status_counts, cancel_batch, create_batch
from db.counts import counts_of
from db.jobs import claim_job, complete_job, create_job, fail_job, forget_unsent_job, resend_job, retry_job
from db.models import JOB_STATUSES, Job
from db.session import dispose_engine, session_scope
from db.tenants import create_tenant
from db.workflow import create_failed_job


def _truth(url: str, batch_id: str) -> tuple[dict[str, int], int]:
    """Counts per status and jobs that ran to an end, the slow way: over every job row."""
    with session_scope(url, readonly=True) as s:
        counts = dict.fromkeys(JOB_STATUSES, 0)
        counts.update(s.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id)
                                .group_by(Job.status)).all())
        ran = s.scalar(select(func.count()).where(Job.batch_id == batch_id, Job.status.in_(("succeeded", "failed")),
                                                  Job.started_at.is_not(None), Job.finished_at.is_not(None)))
    return counts, ran


def _counted(url: str, batch_id: str) -> dict[str, int]:
    with session_scope(url, readonly=True) as s:
        return batch_status_counts(s, batch_id)


def test_counters_follow_every_kind_of_transition(url: str) -> None:
    rng = random.Random(7)
    with session_scope(url) as s:
        tenant_id = create_tenant(s, "acme").id
        batch_id = create_batch(s, tenant_id, "album", {"reference_mode": "none"}).id
    attempts: dict[str, int] = {}
    for step in range(120):
        with session_scope(url) as s:
            jobs = {j.id: j.status for j in s.scalars(select(Job).where(Job.batch_id == batch_id))}
            by_status = {st: [j for j, v in jobs.items() if v == st] for st in JOB_STATUSES}
            action = rng.choice(["create", "create", "claim", "complete", "fail", "retry", "resend", "forget",
                                 "skipped_member", "rollback"])
            if action == "create" or not jobs:
                create_job(s, tenant_id, batch_id, f"in/{step}.png", "0" * 64, f"p{step}.png", 10)
            elif action == "claim" and by_status["queued"]:
                job_id = rng.choice(by_status["queued"])
                attempts[job_id] = claim_job(s, job_id, "w", 50).attempt
            elif action in ("complete", "fail") and by_status["running"]:
                job_id = rng.choice(by_status["running"])
                if action == "complete":
                    complete_job(s, job_id, attempts[job_id], "out.png")
                else:
                    fail_job(s, job_id, attempts[job_id], "decode_error", "bad")
            elif action == "retry" and by_status["failed"]:
                retry_job(s, tenant_id, rng.choice(by_status["failed"]))
            elif action == "resend" and by_status["running"]:
                resend_job(s, tenant_id, rng.choice(by_status["running"]), alive_within_s=0, force=True)
            elif action == "forget" and by_status["queued"]:
                forget_unsent_job(s, rng.choice(by_status["queued"]))
            elif action == "skipped_member":
                create_failed_job(s, tenant_id, batch_id, "in/zip", f"m{step}.txt", "not_an_image", "no")
            elif action == "rollback":  # moves of a transaction that does not commit are never counted
                create_job(s, tenant_id, batch_id, "in/x.png", "0" * 64, "x.png", 10)
                s.rollback()
            # Read inside the transaction: the session's own moves are already visible.
            inside = batch_status_counts(s, batch_id)
        counts, ran = _truth(url, batch_id)
        assert _counted(url, batch_id) == counts == inside, (step, action)
        with session_scope(url, readonly=True) as s:
            assert batch_progress(s, batch_id).total == sum(counts.values())
            assert counts_of(s, [batch_id])[batch_id].ran == ran, (step, action)
    with session_scope(url) as s:
        cancel_batch(s, tenant_id, batch_id)
    counts, _ = _truth(url, batch_id)
    assert _counted(url, batch_id) == counts and counts["queued"] == 0


@pytest.mark.integration
def test_counters_stay_exact_with_many_workers_finishing_at_once(postgres_url: str) -> None:
    migrate.upgrade(postgres_url)
    with session_scope(postgres_url) as s:
        tenant_id = create_tenant(s, "busy").id
        batch_id = create_batch(s, tenant_id, "big", {"reference_mode": "none"}).id
        ids = [create_job(s, tenant_id, batch_id, f"in/{i}.png", "0" * 64, f"p{i}.png", 10).id for i in range(240)]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            start.wait()
            for job_id in ids[n::8]:
                with session_scope(postgres_url) as s:
                    attempt = claim_job(s, job_id, f"w{n}", 5).attempt
                with session_scope(postgres_url) as s:
                    if int(job_id[-1], 16) % 3:
                        complete_job(s, job_id, attempt, "out.png")
                    else:
                        fail_job(s, job_id, attempt, "decode_error", "bad")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    # A cancel racing the workers takes the same rows in the other order of business.
    for t in threads:
        t.start()
    with session_scope(postgres_url) as s:
        cancel_batch(s, tenant_id, batch_id)
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    counts, ran = _truth(postgres_url, batch_id)
    assert _counted(postgres_url, batch_id) == counts
    assert sum(counts.values()) == 240 and counts["queued"] == counts["running"] == 0
    with session_scope(postgres_url, readonly=True) as s:
        assert counts_of(s, [batch_id])[batch_id].ran == ran
    dispose_engine(postgres_url)
