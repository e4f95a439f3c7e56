"""The job state machine: compare-and-set transitions, events, attempts, stuck jobs, metering."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from db.batches import create_batch, get_batch, list_batch_jobs
from db.jobs import (
    ALREADY_TERMINAL,
    CANCELLED,
    NOT_FOUND,
    claim_job,
    complete_job,
    create_job,
    fail_job,
    find_stuck_jobs,
    get_job,
    get_job_any_tenant,
    job_events,
    job_metrics,
    job_reference_rows,
    jobs_by_status,
    jobs_to_send,
    mark_sent,
    retry_job,
)
from db.models import (
    TOO_MANY_ATTEMPTS,
    InvalidTransition,
    Job,
    NotFound,
    utcnow,
)
from db.session import session_scope
from db.tenants import create_tenant


def _tenant_and_batch(url: str, name: str = "acme") -> tuple[str, str]:
    with session_scope(url) as s:
        tenant = create_tenant(s, name)
        batch = create_batch(s, tenant.id, "album", {"output_format": "jpeg"})
        return tenant.id, batch.id


def _jobs(url: str, tenant_id: str, batch_id: str | None, n: int) -> list[str]:
    with session_scope(url) as s:
        return [
            create_job(s, tenant_id, batch_id, f"in/{i}.png", "0" * 64, f"photo{i}.png", 1000 + i).id
            for i in range(n)
        ]


def _transitions(url: str, job_id: str) -> list[tuple[str | None, str]]:
    with session_scope(url) as s:
        return [(e.from_status, e.to_status) for e in job_events(s, job_id)]


REFS = [
    {"reference_id": None, "rank": 0, "total": 0.9, "texture": 0.5, "structure": 0.4, "used": True},
    {"reference_id": None, "rank": 1, "total": 0.7, "texture": 0.4, "structure": 0.3, "used": False},
]


def test_success_path_records_results_and_one_event_per_transition(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    with session_scope(url) as s:
        job = get_job(s, tenant_id, job_id)
        assert job.status == "queued" and job.attempts == 0 and job.output_format == "jpeg"
        assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
        claim = claim_job(s, job_id, "gpu-1", max_attempts=3)
    assert claim.claimed and claim.attempt == 1 and claim.reason is None
    with session_scope(url) as s:
        ok = complete_job(
            s,
            job_id,
            claim.attempt,
            "out/1.jpg",
            model_name="lite",
            checkpoint_sha256="c" * 64,
            device="cpu",
            width=64,
            height=48,
            metrics={"colorfulness": 12.5, "sharpness": 3.0},
            references=REFS,
            worker="gpu-1",
        )
    assert ok
    with session_scope(url) as s:
        job = get_job(s, tenant_id, job_id)
        assert (job.status, job.attempts, job.output_key, job.worker) == (
            "succeeded",
            1,
            "out/1.jpg",
            "gpu-1",
        )
        assert (job.model_name, job.device, job.width, job.height) == ("lite", "cpu", 64, 48)
        assert job.duration_s is not None and 0 <= job.duration_s < 60
        assert job.started_at <= job.finished_at
        assert job.finished_at.utcoffset() == timedelta(0)
        assert job_metrics(s, job_id) == {"colorfulness": 12.5, "sharpness": 3.0}
        rows = job_reference_rows(s, job_id)
        assert [(r.rank, r.used, r.source) for r in rows] == [(0, True, "retrieval"), (1, False, "retrieval")]
        events = job_events(s, job_id)
        assert [e.worker for e in events] == [None, "gpu-1", "gpu-1"]
    assert _transitions(url, job_id) == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]


def test_every_transition_writes_a_consistent_event_chain(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    a, b, c, d = _jobs(url, tenant_id, batch_id, 4)
    with session_scope(url) as s:
        attempt = claim_job(s, a, "w", 5).attempt
        assert fail_job(s, a, attempt, "bad_input", "not an image", worker="w")
        retry_job(s, tenant_id, a)
        assert fail_job(s, b, None, "bad_input", "truncated")  # straight from queued
        claim_job(s, c, "w1", 5)
        claim_job(s, c, "w2", 5)  # redelivered: takes over
        claim_job(s, d, "w", 1)
        assert claim_job(s, d, "w", 1).reason == TOO_MANY_ATTEMPTS
    assert _transitions(url, a) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "failed"),
        ("failed", "queued"),
    ]
    assert _transitions(url, b) == [(None, "queued"), ("queued", "failed")]
    assert _transitions(url, c) == [(None, "queued"), ("queued", "running"), ("running", "running")]
    assert _transitions(url, d) == [(None, "queued"), ("queued", "running"), ("running", "failed")]
    for job_id in (a, b, c, d):
        chain = _transitions(url, job_id)
        assert all(prev[1] == nxt[0] for prev, nxt in zip(chain, chain[1:], strict=False))
        with session_scope(url) as s:
            assert chain[-1][1] == get_job(s, tenant_id, job_id).status


def test_second_claim_of_a_succeeded_job_does_nothing(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    with session_scope(url) as s:
        attempt = claim_job(s, job_id, "w1", 5).attempt
        assert complete_job(s, job_id, attempt, "out/x.png")
    with session_scope(url) as s:
        again = claim_job(s, job_id, "w2", 5)
    assert not again.claimed and again.reason == ALREADY_TERMINAL and again.status == "succeeded"
    with session_scope(url) as s:
        job = get_job(s, tenant_id, job_id)
        assert (job.status, job.attempts, job.worker) == ("succeeded", 1, "w1")
    assert len(_transitions(url, job_id)) == 3


def test_stale_attempt_cannot_complete_or_fail_after_a_newer_claim(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    with session_scope(url) as s:
        first = claim_job(s, job_id, "w1", 5)
    with session_scope(url) as s:
        second = claim_job(s, job_id, "w2", 5)  # the broker redelivered while w1 still runs
    assert (first.attempt, second.attempt) == (1, 2)
    with session_scope(url) as s:
        assert not complete_job(s, job_id, first.attempt, "out/stale.png", metrics={"psnr": 1.0})
        assert not fail_job(s, job_id, first.attempt, "worker_lost", "stale")
    with session_scope(url) as s:
        job = get_job(s, tenant_id, job_id)
        assert (job.status, job.attempts, job.output_key) == ("running", 2, None)
        assert job_metrics(s, job_id) == {}
        assert complete_job(s, job_id, second.attempt, "out/fresh.png", worker="w2")
    with session_scope(url) as s:
        assert get_job(s, tenant_id, job_id).output_key == "out/fresh.png"


def test_completing_twice_records_one_set_of_metrics_and_references(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    with session_scope(url) as s:
        attempt = claim_job(s, job_id, "w", 5).attempt
        assert complete_job(s, job_id, attempt, "out/a.png", metrics={"ssim": 0.9}, references=REFS)
    with session_scope(url) as s:
        assert not complete_job(
            s,
            job_id,
            attempt,
            "out/b.png",
            metrics={"ssim": 0.1, "psnr": 5.0},
            references=REFS + [{"rank": 2, "used": False}],
        )
    with session_scope(url) as s:
        assert job_metrics(s, job_id) == {"ssim": 0.9}
        assert len(job_reference_rows(s, job_id)) == 2
        assert get_job(s, tenant_id, job_id).output_key == "out/a.png"
    assert _transitions(url, job_id)[-1] == ("running", "succeeded")
    assert len(_transitions(url, job_id)) == 3


def test_too_many_attempts_moves_the_job_to_failed(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    with session_scope(url) as s:
        assert [claim_job(s, job_id, f"w{i}", 2).attempt for i in range(2)] == [1, 2]
        dead = claim_job(s, job_id, "w3", 2)
    assert not dead.claimed and dead.reason == TOO_MANY_ATTEMPTS and dead.status == "failed"
    with session_scope(url) as s:
        job = get_job(s, tenant_id, job_id)
        assert (job.status, job.error_code, job.attempts) == ("failed", TOO_MANY_ATTEMPTS, 2)
        assert claim_job(s, job_id, "w4", 2).reason == ALREADY_TERMINAL
        # A retry restores the attempt budget.
        assert retry_job(s, tenant_id, job_id).attempts == 0
        assert claim_job(s, job_id, "w5", 2).attempt == 1


def test_claim_reports_cancelled_and_missing_jobs(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    from db.batches import cancel_batch

    with session_scope(url) as s:
        assert cancel_batch(s, tenant_id, batch_id) == 1
        assert claim_job(s, job_id, "w", 5).reason == CANCELLED
        assert claim_job(s, "00000000-0000-4000-8000-000000000000", "w", 5).reason == NOT_FOUND
        assert not fail_job(s, job_id, None, "x", "cancelled jobs stay cancelled")


def test_retry_accepts_failed_jobs_only(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    other_id, _ = _tenant_and_batch(url, "other")
    ok_id, bad_id = _jobs(url, tenant_id, batch_id, 2)
    with session_scope(url) as s:
        assert complete_job(s, ok_id, claim_job(s, ok_id, "w", 5).attempt, "out.png")
        assert fail_job(s, bad_id, claim_job(s, bad_id, "w", 5).attempt, "decode_error", "boom")
    with session_scope(url) as s, pytest.raises(InvalidTransition, match="succeeded"):
        retry_job(s, tenant_id, ok_id)
    with session_scope(url) as s, pytest.raises(NotFound):
        retry_job(s, other_id, bad_id)
    with session_scope(url) as s:
        job = retry_job(s, tenant_id, bad_id)
        assert (job.status, job.attempts, job.error_code, job.error_message) == ("queued", 0, None, None)
        assert job.sent_at is None and job.queued_at is not None


def test_queries_are_scoped_by_tenant(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    other_id, _ = _tenant_and_batch(url, "other")
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    with session_scope(url) as s:
        assert get_job(s, other_id, job_id) is None
        assert get_job(s, tenant_id, job_id) is not None
        assert get_job_any_tenant(s, job_id).tenant_id == tenant_id
        assert get_batch(s, other_id, batch_id) is None
        assert list_batch_jobs(s, other_id, batch_id) == ([], None)
        with pytest.raises(NotFound):
            create_job(s, other_id, batch_id, "k", None, None, None)


def test_stuck_job_query_finds_old_queued_and_running_jobs_only(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    ids = _jobs(url, tenant_id, batch_id, 8)
    never_sent, old_queued, new_queued, old_running, new_running, old_done, old_unsent_running, waited = ids
    now = utcnow()
    old, recent = now - timedelta(hours=2), now - timedelta(seconds=30)
    with session_scope(url) as s:
        mark_sent(s, [old_queued, old_running, old_done, waited], now=old)
        mark_sent(s, [new_queued, new_running], now=recent)
        for job_id in (old_running, new_running, old_done, old_unsent_running, waited):
            claim_job(s, job_id, "w", 5)
        assert complete_job(s, old_done, 1, "out.png")
        # ``waited`` sat in the queue for two hours but only just started: running, not stuck.
        s.execute(update(Job).where(Job.id.in_([old_unsent_running, old_running])).values(started_at=old))
    with session_scope(url) as s:
        stuck = find_stuck_jobs(s, now, queued_older_than_s=600, running_older_than_s=3600, limit=100)
        assert set(stuck) == {old_queued, old_running, old_unsent_running}
        assert never_sent not in stuck and waited not in stuck
        assert len(find_stuck_jobs(s, now, 600, 3600, limit=1)) == 1
        # Re-sending restarts the clock, so the next sweep does not pick them again.
        mark_sent(s, stuck, now=now)
        assert find_stuck_jobs(s, now, 600, 3600) == []


def test_fair_metering_gives_a_small_tenant_slots_beside_a_big_backlog(url: str) -> None:
    big_id, big_batch = _tenant_and_batch(url, "big")
    small_id, small_batch = _tenant_and_batch(url, "small")
    big_jobs = _jobs(url, big_id, big_batch, 30)
    with session_scope(url) as s:
        first = jobs_to_send(s, tenant_backlog_limit=10)
        assert [j.id for j in first] == big_jobs[:10]  # oldest first
        mark_sent(s, [j.id for j in first])
    small_jobs = _jobs(url, small_id, small_batch, 3)  # arrives while big has 20 waiting
    with session_scope(url) as s:
        second = jobs_to_send(s, tenant_backlog_limit=10)
        assert [j.id for j in second] == small_jobs  # big is at its limit, small is not starved
        mark_sent(s, [j.id for j in second])
        for job_id in big_jobs[:4]:  # four of big's in-flight jobs finish
            assert complete_job(s, job_id, claim_job(s, job_id, "w", 5).attempt, "o.png")
    more_small = _jobs(url, small_id, small_batch, 2)
    with session_scope(url) as s:
        third = jobs_to_send(s, tenant_backlog_limit=10)
    # Round robin, the tenant with fewer jobs in flight (small: 3, big: 6) first in each turn.
    assert [j.tenant_id for j in third] == [small_id, big_id, small_id, big_id, big_id, big_id]
    assert {j.id for j in third} == set(big_jobs[10:14]) | set(more_small)


def test_jobs_by_status_and_mark_sent_skip_finished_jobs(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    a, b, c = _jobs(url, tenant_id, batch_id, 3)
    with session_scope(url) as s:
        assert complete_job(s, a, claim_job(s, a, "w", 5).attempt, "o.png")
        claim_job(s, b, "w", 5)
        assert mark_sent(s, [a, b, c]) == 2
        assert jobs_by_status(s) == {"queued": 1, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0, "awaiting_review": 0}
        assert get_job(s, tenant_id, a).sent_at is None


def _race(url: str, n: int, work) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            with session_scope(url) as s:
                results[i] = work(s, i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_two_threads_racing_to_complete_the_same_job_exactly_one_wins(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    with session_scope(url) as s:
        attempt = claim_job(s, job_id, "w", 5).attempt
    wins = _race(
        url,
        2,
        lambda s, i: complete_job(
            s, job_id, attempt, f"out/{i}.png", metrics={"m": float(i)}, references=REFS, worker=f"w{i}"
        ),
    )
    assert sorted(wins) == [False, True]
    winner = wins.index(True)
    with session_scope(url) as s:
        job = get_job(s, tenant_id, job_id)
        assert job.output_key == f"out/{winner}.png"
        assert job_metrics(s, job_id) == {"m": float(winner)}
        assert len(job_reference_rows(s, job_id)) == 2
    assert _transitions(url, job_id).count(("running", "succeeded")) == 1


def test_concurrent_claims_get_distinct_attempt_numbers(url: str) -> None:
    tenant_id, batch_id = _tenant_and_batch(url)
    (job_id,) = _jobs(url, tenant_id, batch_id, 1)
    claims = _race(url, 4, lambda s, i: claim_job(s, job_id, f"w{i}", 10))
    assert sorted(c.attempt for c in claims) == [1, 2, 3, 4]
    assert all(c.claimed for c in claims)
    with session_scope(url) as s:
        assert get_job(s, tenant_id, job_id).attempts == 4
    assert len(_transitions(url, job_id)) == 5
