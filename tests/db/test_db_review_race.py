"""Review decisions are compare-and-set: of approve and redo racing on one result exactly one lands."""

from __future__ import annotations

import threading

import pytest

from db import repository as repo
from db.models import InvalidTransition
from db.session import session_scope


def _awaiting(url: str) -> tuple[str, str]:
    """A tenant and one of its jobs that ran and waits for review."""
    with session_scope(url) as s:
        tenant_id = repo.create_tenant(s, "bureau").id
        batch_id = repo.create_batch(s, tenant_id, "album", {"reference_mode": "none", "review": "all"}).id
        job_id = repo.create_job(s, tenant_id, batch_id, "k.png", "a" * 64, "k.png", 3).id
        repo.submit_batch(s, tenant_id, batch_id)
    with session_scope(url) as s:
        attempt = repo.claim_job(s, job_id, "w1", 3).attempt
    with session_scope(url) as s:
        assert repo.complete_job(s, job_id, attempt, "out.png", output_sha256="b" * 64, needs_review=True)
    return tenant_id, job_id


def test_a_decision_needs_a_pending_review(url: str) -> None:
    tenant_id, job_id = _awaiting(url)
    with session_scope(url) as s:
        assert repo.batch_status_counts(s, repo.get_job(s, tenant_id, job_id).batch_id)["awaiting_review"] == 1
        outcome = repo.decide_review(s, tenant_id, job_id, "redo", note="too red", actor="api:abc")
        assert outcome.redo is not None and outcome.redo.redo_of == job_id
        assert (outcome.job.status, outcome.job.review, outcome.job.error_code) == (
            "failed", "rejected", "rejected_in_review")
    with session_scope(url) as s, pytest.raises(InvalidTransition):
        repo.decide_review(s, tenant_id, job_id, "approve", actor="api:abc")


@pytest.mark.integration
def test_approve_racing_redo_has_one_winner_on_postgres(postgres_url: str) -> None:
    from db.migrate import upgrade

    upgrade(postgres_url)
    tenant_id, job_id = _awaiting(postgres_url)
    loser: dict[str, object] = {}
    with session_scope(postgres_url) as first:
        repo.decide_review(first, tenant_id, job_id, "approve", actor="api:first")

        def redo() -> None:
            try:
                with session_scope(postgres_url) as s:
                    repo.decide_review(s, tenant_id, job_id, "redo", actor="api:second")
            except InvalidTransition as exc:
                loser["error"] = exc

        thread = threading.Thread(target=redo)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), "the second decision should wait on the first's row lock"
    thread.join(timeout=30)
    assert isinstance(loser.get("error"), InvalidTransition)
    with session_scope(postgres_url, readonly=True) as s:
        job = repo.get_job(s, tenant_id, job_id)
        assert (job.status, job.review) == ("succeeded", "approved")
        jobs, _ = repo.list_batch_jobs(s, tenant_id, job.batch_id)
        assert len(jobs) == 1  # the losing redo queued nothing
        decided = repo.job_events(s, job_id, kinds=("review",))
        assert [(e.outcome, e.actor) for e in decided] == [("success", "api:first")]
        assert repo.batch_status_counts(s, job.batch_id)["succeeded"] == 1
