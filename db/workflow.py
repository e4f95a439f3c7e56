"""Compound operations of the job system built from the per-table queries: the tenant of the embedded
mode, paging through a whole batch, idempotent job creation for archive ingestion, and what a bureau
controls once a job exists, with the fixity checks recorded along the way:

* Cancel: a queued job is cancelled at once; a running one is flagged (``cancel_requested_at``) and its
  worker ends it ``cancelled`` at its next safe point (:func:`cancel_if_requested`); a finished job stays.
* Review: a result waiting in ``awaiting_review`` is approved (succeeded), rejected (failed,
  ``rejected_in_review``) or redone (rejected, and a new job linked to it by ``redo_of`` is queued).
* Fixity: each check of a stored object's digest is an event of kind ``fixity``.

Every state change is a compare-and-set through ``db.jobs._transition``, so of two decisions racing on
one job exactly one lands; the loser gets ``InvalidTransition``. Each writes its events in the same
transaction: a status event, plus one of kind ``cancel`` or ``review`` naming the actor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.batches import list_batch_jobs
from db.jobs import _transition, create_job, fail_job, get_job, record_events
from db.models import (
    EVENT_CANCEL,
    EVENT_FIXITY,
    EVENT_REVIEW,
    JOB_AWAITING_REVIEW,
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    OUTCOME_FAILURE,
    OUTCOME_SUCCESS,
    REJECTED_IN_REVIEW,
    REVIEW_APPROVED,
    REVIEW_PENDING,
    REVIEW_REJECTED,
    Batch,
    InvalidTransition,
    Job,
    NotFound,
    Reference,
    Tenant,
    utcnow,
)
from db.tenants import create_tenant

__all__ = [
    "REVIEW_DECISIONS",
    "SKIPPED_MEMBER",
    "ReviewOutcome",
    "cancel_if_requested",
    "cancel_job",
    "decide_review",
    "record_fixity",
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


REVIEW_DECISIONS = ("approve", "reject", "redo")


# --- cancel -----------------------------------------------------------------------------------


def cancel_job(s: Session, tenant_id: str, job_id: str, *, actor: str | None = None) -> Job:
    """Cancel one job: queued → cancelled now; running → flagged, the worker stops at a safe point.

    Asking twice is harmless. A job that already ended (or awaits review) raises ``InvalidTransition``;
    a job claimed between our read and our update is flagged on the next turn.
    """
    for _ in range(3):
        job = get_job(s, tenant_id, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.status == JOB_CANCELLED or (job.status == JOB_RUNNING and job.cancel_requested_at is not None):
            return job
        now = utcnow()
        if job.status == JOB_QUEUED:
            values = {"finished_at": now, "updated_at": now, "cancel_requested_at": now}
            if _transition(s, job_id, JOB_QUEUED, JOB_CANCELLED, values, actor=actor, detail="cancel requested"):
                record_events(s, [job_id], JOB_QUEUED, JOB_CANCELLED, at=now, kind=EVENT_CANCEL,
                              outcome=OUTCOME_SUCCESS, actor=actor, detail="cancelled before it ran")
                return _fresh(s, job_id)
        elif job.status == JOB_RUNNING:
            flagged = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JOB_RUNNING, Job.cancel_requested_at.is_(None))
                .values(cancel_requested_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if flagged:
                record_events(s, [job_id], JOB_RUNNING, JOB_RUNNING, at=now, kind=EVENT_CANCEL, actor=actor,
                              detail="cancel requested while running; the worker stops at its next safe point")
                return _fresh(s, job_id)
        else:
            raise InvalidTransition(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
    raise InvalidTransition(f"job {job_id} changed state meanwhile; look at it again")


def cancel_if_requested(s: Session, job_id: str, attempt: int, *, worker: str | None = None) -> bool:
    """The worker's safe point: end the job ``cancelled`` if a cancel was asked for while this attempt
    ran; ``False`` (nothing changed) otherwise."""
    now = utcnow()
    row = _transition(
        s, job_id, JOB_RUNNING, JOB_CANCELLED, {"finished_at": now, "updated_at": now},
        extra=(Job.attempts == attempt, Job.cancel_requested_at.is_not(None)),
        worker=worker, detail="cancelled at a safe point",
    )
    if row is not None:
        record_events(s, [job_id], JOB_RUNNING, JOB_CANCELLED, at=now, kind=EVENT_CANCEL, outcome=OUTCOME_SUCCESS,
                      worker=worker, detail="stopped at a safe point; no result kept")
    return row is not None


# --- fixity -----------------------------------------------------------------------------------


def record_fixity(
    s: Session, job_id: str, obj: str, expected: str | None, actual: str, *, actor: str | None = None
) -> bool:
    """Record one fixity check of the job's ``obj`` (``original`` or ``result``); returns whether the
    digests matched (an unknown expected digest records the one found as a success)."""
    ok = expected is None or expected == actual
    status = s.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise NotFound(f"job {job_id} not found")
    detail = (f"{obj}: sha256 {actual}" if ok else f"{obj}: expected sha256 {expected}, storage returned {actual}")
    record_events(s, [job_id], status, status, kind=EVENT_FIXITY, outcome=OUTCOME_SUCCESS if ok else OUTCOME_FAILURE,
                  actor=actor, worker=actor, detail=detail)
    return ok


# --- review -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewOutcome:
    """The reviewed job as it now is, and the new attempt a ``redo`` queued (else ``None``)."""

    job: Job
    redo: Job | None = None


def decide_review(
    s: Session,
    tenant_id: str,
    job_id: str,
    decision: str,
    *,
    note: str | None = None,
    reference_id: str | None = None,
    actor: str | None = None,
) -> ReviewOutcome:
    """Apply a person's decision to a job awaiting review (``approve`` | ``reject`` | ``redo``).

    ``redo`` rejects the result (kept in storage, linked) and queues a new job of the same original with
    the same options, or with ``reference_id`` as a manual reference. Raises ``NotFound``,
    ``InvalidTransition`` (not awaiting review: decided already, or never gated) or ``ValueError``.
    """
    if decision not in REVIEW_DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(REVIEW_DECISIONS)}")
    job = get_job(s, tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    now = utcnow()
    approved = decision == "approve"
    values = {"review": REVIEW_APPROVED if approved else REVIEW_REJECTED, "review_note": note, "updated_at": now}
    if not approved:
        values.update(error_code=REJECTED_IN_REVIEW, error_message=note or "rejected in review")
    to_status = JOB_SUCCEEDED if approved else JOB_FAILED
    won = _transition(s, job_id, JOB_AWAITING_REVIEW, to_status, values, extra=(Job.review == REVIEW_PENDING,),
                      actor=actor, detail=f"review: {decision}")
    if won is None:
        raise InvalidTransition(f"job {job_id} is {job.status}"
                                f"{f' (review {job.review})' if job.review else ''}; it is not awaiting review")
    redo = _redo(s, job, reference_id, actor) if decision == "redo" else None
    detail = note or decision
    if redo is not None:
        detail = f"redone as job {redo.id}" + (f": {note}" if note else "")
        s.execute(update(Job).where(Job.id == job_id).values(error_message=detail)
                  .execution_options(synchronize_session=False))
    record_events(s, [job_id], JOB_AWAITING_REVIEW, to_status, at=now, kind=EVENT_REVIEW,
                  outcome=OUTCOME_SUCCESS if approved else OUTCOME_FAILURE, actor=actor, detail=detail)
    return ReviewOutcome(_fresh(s, job_id), redo)


def _redo(s: Session, old: Job, reference_id: str | None, actor: str | None) -> Job:
    """A new queued job of the same original and options (a manual reference if one is named)."""
    options = {"output_format": old.output_format, "colourize": old.colourize, "mark": old.mark}
    if reference_id is not None:
        options.update(reference_mode="manual", reference_id=reference_id)
    else:
        options.update(reference_mode=old.reference_mode,
                       reference_id=old.reference_id if old.reference_mode == "manual" else None)
    if old.batch_id is not None:
        batch_options = s.scalar(select(Batch.options).where(Batch.id == old.batch_id)) or {}
        options.update(working_size=batch_options.get("working_size"), review=batch_options.get("review"))
        s.execute(update(Batch).where(Batch.id == old.batch_id).values(total_jobs=Batch.total_jobs + 1)
                  .execution_options(synchronize_session=False))
    return create_job(s, old.tenant_id, old.batch_id, old.input_key, old.input_sha256, old.input_name,
                      old.input_bytes, options, redo_of=old.id, actor=actor)


def _fresh(s: Session, job_id: str) -> Job:
    job = s.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job
