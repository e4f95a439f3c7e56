"""Job rows and their state machine: queued → running → succeeded | failed | cancelled.

Every transition is a compare-and-set ``UPDATE … WHERE status = …`` whose row count says whether
this caller won, and writes a ``job_events`` row in the same transaction. That is what lets a
Celery task run twice at once (Redis redelivers past its visibility timeout) without recording a
result twice: the claim bumps ``attempts``, and completion or failure only lands when the row is
still ``running`` with the caller's attempt number, so a stale run records nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.counts import RAN_STATUSES, note_move
from db.models import (
    EVENT_INGESTION,
    EVENT_STATUS,
    JOB_ACTIVE,
    JOB_AWAITING_REVIEW,
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_STATUSES,
    JOB_SUCCEEDED,
    JOB_TERMINAL,
    OUTCOME_SUCCESS,
    OUTPUT_FORMATS,
    REF_DELETED,
    REFERENCE_MODES,
    REFERENCE_SOURCES,
    REVIEW_MODES,
    REVIEW_PENDING,
    TOO_MANY_ATTEMPTS,
    Batch,
    InvalidOptions,
    InvalidTransition,
    Job,
    JobEvent,
    JobReference,
    JobStillRunning,
    NotFound,
    QualityMetric,
    Reference,
    new_id,
    utcnow,
)

MAX_ERROR_MESSAGE = 4000
METERING_LOCK_KEY = 0x70696B66  # advisory lock key that serialises jobs_to_send on PostgreSQL
_IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's bound-parameter limit

# Reasons a claim can be refused (ClaimResult.reason).
NOT_FOUND = "not_found"
ALREADY_TERMINAL = "already_terminal"
CANCELLED = "cancelled"
CONFLICT = "conflict"


@dataclass(frozen=True)
class ClaimResult:
    """Outcome of :func:`claim_job`.

    ``claimed`` with ``attempt`` (1-based) when this caller may run the job and must pass
    ``attempt`` to :func:`complete_job` / :func:`fail_job`. Otherwise ``reason`` is one of
    ``not_found``, ``already_terminal`` (succeeded or failed), ``cancelled``,
    ``too_many_attempts`` (the job was just moved to failed: the dead-letter rule) or
    ``conflict`` (other claimers kept winning the race; rare, safe to drop the task).
    """

    claimed: bool
    attempt: int
    status: str | None
    reason: str | None = None


# --- options ----------------------------------------------------------------------------------


def normalize_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate batch/job options and fill defaults; unknown keys are refused (typos fail loudly)."""
    opts = dict(options or {})
    known = {"reference_mode", "reference_id", "output_format", "working_size", "colourize", "mark", "review"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise InvalidOptions(f"unknown option(s): {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    mode = opts.get("reference_mode") or "auto"
    if mode not in REFERENCE_MODES:
        raise InvalidOptions(f"reference_mode must be one of {', '.join(REFERENCE_MODES)}, got {mode!r}")
    ref_id = opts.get("reference_id")
    if mode == "manual" and not ref_id:
        raise InvalidOptions("reference_mode 'manual' needs a reference_id")
    if ref_id is not None and mode != "manual":
        raise InvalidOptions("reference_id is only used with reference_mode 'manual'")
    if ref_id is not None and (not isinstance(ref_id, str) or len(ref_id) != 36):
        raise InvalidOptions("reference_id must be a 36-character id")
    fmt = opts.get("output_format") or "png"
    if fmt not in OUTPUT_FORMATS:
        raise InvalidOptions(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    size = opts.get("working_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 4096):
        raise InvalidOptions(f"working_size must be an integer in [32, 4096], got {size!r}")
    colourize, mark = _flag(opts, "colourize", True), _flag(opts, "mark", False)
    review = opts.get("review") or "none"
    if review not in REVIEW_MODES:
        raise InvalidOptions(f"review must be one of {', '.join(REVIEW_MODES)}, got {review!r}")
    return {"reference_mode": mode, "reference_id": ref_id, "output_format": fmt, "working_size": size,
            "colourize": colourize, "mark": mark, "review": review}


def _flag(opts: Mapping[str, Any], name: str, default: bool) -> bool:
    """A yes/no option: a real boolean (JSON true/false), never a string that merely looks like one."""
    value = opts.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidOptions(f"{name} must be true or false, got {value!r}")
    return value


def check_reference_owner(s: Session, tenant_id: str, options: Mapping[str, Any]) -> None:
    """A manual reference must be one of the tenant's own live photos, never another tenant's."""
    ref_id = options.get("reference_id")
    if ref_id is None:
        return
    ref = s.get(Reference, ref_id)
    if ref is None or ref.tenant_id != tenant_id or ref.status == REF_DELETED:
        raise NotFound(f"reference {ref_id} not found")


# --- events -----------------------------------------------------------------------------------


def record_events(
    s: Session,
    job_ids: Iterable[str],
    from_status: str | None,
    to_status: str,
    *,
    worker: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
    kind: str = EVENT_STATUS,
    outcome: str | None = None,
    actor: str | None = None,
) -> None:
    """Append one audit row per job; call in the transaction that made the change.

    ``kind`` says what happened (a status change, a fixity check, a review decision …), ``actor`` who
    did it: a worker's name (the default when a worker acts) or ``api:<key prefix>`` for a person.
    """
    at = at or utcnow()
    rows = [
        {
            "job_id": j,
            "at": at,
            "from_status": from_status,
            "to_status": to_status,
            "worker": worker,
            "detail": detail,
            "kind": kind,
            "outcome": outcome,
            "actor": actor or worker,
        }
        for j in job_ids
    ]
    if rows:
        s.execute(JobEvent.__table__.insert(), rows)


def _transition(
    s: Session,
    job_id: str,
    from_status: str,
    to_status: str,
    values: dict[str, Any],
    *,
    extra: Sequence[Any] = (),
    worker: str | None = None,
    detail: str | None = None,
    returning: Sequence[Any] = (Job.id,),
    actor: str | None = None,
    kind: str = EVENT_STATUS,
    outcome: str | None = None,
) -> Any | None:
    """Compare-and-set one job from ``from_status``; on success write the event, count the move in its
    batch (``db.counts``) and return the row."""
    had_run = False
    if from_status in RAN_STATUSES:  # leaving a finished state (a retry): did it count as having run?
        had_run = s.execute(select(Job.started_at.is_not(None)).where(Job.id == job_id)).scalar() or False
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == from_status, *extra)
        .values(status=to_status, **values)
        .returning(*returning, Job.batch_id.label("_batch"), Job.started_at.label("_started"),
                   Job.finished_at.label("_finished"))
        .execution_options(synchronize_session="fetch")
    )
    row = s.execute(stmt).first()
    if row is not None:
        record_events(s, [job_id], from_status, to_status, worker=worker, detail=detail,
                      at=values.get("updated_at"), kind=kind, outcome=outcome, actor=actor)
        ran = to_status in RAN_STATUSES and row._started is not None and row._finished is not None
        note_move(s, row._batch, from_status, to_status, ran=int(ran) - int(had_run),
                  started_at=row._started if ran else None, finished_at=row._finished if ran else None)
    return row


def _truncate(message: str | None) -> str | None:
    if message is None or len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[: MAX_ERROR_MESSAGE - 1] + "…"


# --- creation and lookup ----------------------------------------------------------------------


def create_job(
    s: Session,
    tenant_id: str,
    batch_id: str | None,
    input_key: str,
    input_sha256: str | None,
    input_name: str | None,
    input_bytes: int | None,
    options: Mapping[str, Any] | None = None,
    *,
    job_id: str | None = None,
    redo_of: str | None = None,
    actor: str | None = None,
) -> Job:
    """Insert a queued job (and its creation event, plus an ingestion event naming the original's digest).

    ``options`` default to the batch's. ``job_id`` lets the caller choose the id beforehand, so
    the original can be stored under a key derived from it before the row exists. ``redo_of`` links a
    new attempt made in review to the job it redoes.
    """
    if batch_id is not None:
        batch = s.get(Batch, batch_id)
        if batch is None or batch.tenant_id != tenant_id:
            raise NotFound(f"batch {batch_id} not found")
        if options is None:
            options = dict(batch.options or {})
    opts = normalize_options(options)
    check_reference_owner(s, tenant_id, opts)
    now = utcnow()
    job = Job(
        id=job_id or new_id(),
        tenant_id=tenant_id,
        batch_id=batch_id,
        status=JOB_QUEUED,
        attempts=0,
        input_key=input_key,
        input_sha256=input_sha256,
        input_name=input_name,
        input_bytes=input_bytes,
        output_format=opts["output_format"],
        reference_mode=opts["reference_mode"],
        reference_id=opts["reference_id"],
        colourize=opts["colourize"],
        mark=opts["mark"],
        redo_of=redo_of,
        created_at=now,
        queued_at=now,
        updated_at=now,
    )
    s.add(job)
    s.flush()
    record_events(s, [job.id], None, JOB_QUEUED, at=now, actor=actor)
    if input_sha256 is not None:
        record_events(s, [job.id], None, JOB_QUEUED, at=now, kind=EVENT_INGESTION, outcome=OUTCOME_SUCCESS,
                      actor=actor, detail=f"original {input_name or input_key}: sha256 {input_sha256}")
    note_move(s, batch_id, None, JOB_QUEUED)
    return job


def get_job(s: Session, tenant_id: str, job_id: str) -> Job | None:
    """The job if it belongs to ``tenant_id``; another tenant's job is indistinguishable from none."""
    return s.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def get_job_any_tenant(s: Session, job_id: str) -> Job | None:
    """Unscoped lookup for workers, which receive only a job id."""
    return s.get(Job, job_id)


def mark_sent(s: Session, job_ids: Sequence[str], *, now: datetime | None = None) -> int:
    """Record that a task was sent for these (still active) jobs; returns how many rows changed."""
    now = now or utcnow()
    changed = 0
    for i in range(0, len(job_ids), _IN_CHUNK):
        chunk = list(job_ids[i : i + _IN_CHUNK])
        result = s.execute(
            update(Job)
            .where(Job.id.in_(chunk), Job.status.in_(JOB_ACTIVE))
            .values(sent_at=now, updated_at=now)
            .execution_options(synchronize_session="fetch")
        )
        changed += result.rowcount or 0
    return changed


# --- the worker's side of the state machine ---------------------------------------------------


def claim_job(s: Session, job_id: str, worker: str, max_attempts: int) -> ClaimResult:
    """Compare-and-set claim: queued or running with attempts left → running, attempts + 1.

    Claiming a job that is already running is allowed on purpose: it is how a task redelivered
    after a worker died takes over; the old run's attempt number becomes stale. A job that is
    active but out of attempts is moved to ``failed`` with code ``too_many_attempts``.
    """
    for _ in range(3):
        now = utcnow()
        for from_status in (JOB_QUEUED, JOB_RUNNING):
            row = _transition(
                s,
                job_id,
                from_status,
                JOB_RUNNING,
                {
                    "attempts": Job.attempts + 1,
                    "started_at": now,
                    "heartbeat_at": now,
                    "finished_at": None,
                    "worker": worker,
                    "updated_at": now,
                },
                extra=(Job.attempts < max_attempts,),
                worker=worker,
                detail="claimed",
                returning=(Job.attempts,),
            )
            if row is not None:
                return ClaimResult(True, row.attempts, JOB_RUNNING)

        current = s.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).first()
        if current is None:
            return ClaimResult(False, 0, None, NOT_FOUND)
        if current.status in JOB_TERMINAL:
            reason = CANCELLED if current.status == JOB_CANCELLED else ALREADY_TERMINAL
            return ClaimResult(False, current.attempts, current.status, reason)
        if current.attempts >= max_attempts:
            failed = _transition(
                s,
                job_id,
                current.status,
                JOB_FAILED,
                {
                    "error_code": TOO_MANY_ATTEMPTS,
                    "error_message": f"gave up after {current.attempts} attempts (limit {max_attempts})",
                    "finished_at": now,
                    "updated_at": now,
                },
                extra=(Job.attempts == current.attempts,),
                worker=worker,
                detail=TOO_MANY_ATTEMPTS,
            )
            if failed is not None:
                return ClaimResult(False, current.attempts, JOB_FAILED, TOO_MANY_ATTEMPTS)
        # Another claimer changed the row between our statements (PostgreSQL); look again.
    return ClaimResult(False, 0, None, CONFLICT)


def _dialect_insert(s: Session, model: type) -> Any:
    name = s.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"upsert not implemented for {name}")


def _store_metrics(s: Session, job_id: str, metrics: Mapping[str, float]) -> None:
    rows = [
        {"job_id": job_id, "name": str(name), "value": float(value)}
        for name, value in metrics.items()
        if value is not None and math.isfinite(float(value))
    ]
    if not rows:
        return
    stmt = _dialect_insert(s, QualityMetric)
    s.execute(
        stmt.on_conflict_do_update(index_elements=["job_id", "name"], set_={"value": stmt.excluded.value}),
        rows,
    )


def _store_references(s: Session, job_id: str, references: Sequence[Mapping[str, Any]]) -> str | None:
    """Upsert the scored candidates; returns the id of the reference marked ``used``, if any."""
    rows, used_id = [], None
    for i, ref in enumerate(references):
        source = ref.get("source", "retrieval")
        if source not in REFERENCE_SOURCES:
            raise InvalidOptions(
                f"reference source must be one of {', '.join(REFERENCE_SOURCES)}, got {source!r}"
            )
        used = bool(ref.get("used", False))
        if used and ref.get("reference_id"):
            used_id = ref["reference_id"]
        rows.append(
            {
                "id": new_id(),
                "job_id": job_id,
                "reference_id": ref.get("reference_id"),
                "rank": int(ref.get("rank", i)),
                "total": ref.get("total"),
                "texture": ref.get("texture"),
                "structure": ref.get("structure"),
                "used": used,
                "source": source,
            }
        )
    if rows:
        stmt = _dialect_insert(s, JobReference)
        cols = ("reference_id", "total", "texture", "structure", "used", "source")
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=["job_id", "rank"], set_={c: getattr(stmt.excluded, c) for c in cols}
            ),
            rows,
        )
    return used_id


def complete_job(
    s: Session,
    job_id: str,
    attempt: int,
    output_key: str,
    *,
    model_name: str | None = None,
    checkpoint_sha256: str | None = None,
    device: str | None = None,
    width: int | None = None,
    height: int | None = None,
    metrics: Mapping[str, float] | None = None,
    references: Sequence[Mapping[str, Any]] | None = None,
    worker: str | None = None,
    output_sha256: str | None = None,
    needs_review: bool = False,
) -> bool:
    """Record a successful run; ``False`` (and nothing written) unless this is still the live attempt
    and nobody asked to cancel it meanwhile.

    ``references`` are dicts with ``reference_id, rank, total, texture, structure, used, source``;
    the one with ``used=True`` becomes the job's ``reference_id``. Metric and reference rows are
    upserts, so even a replayed call cannot duplicate them. With ``needs_review`` the job waits in
    ``awaiting_review`` (review ``pending``) for a person's decision instead of succeeding.
    """
    now = utcnow()
    row = _transition(
        s,
        job_id,
        JOB_RUNNING,
        JOB_AWAITING_REVIEW if needs_review else JOB_SUCCEEDED,
        {
            "output_key": output_key,
            "output_sha256": output_sha256,
            "review": REVIEW_PENDING if needs_review else None,
            "model_name": model_name,
            "checkpoint_sha256": checkpoint_sha256,
            "device": device,
            "width": width,
            "height": height,
            "finished_at": now,
            "updated_at": now,
            "error_code": None,
            "error_message": None,
        },
        extra=(Job.attempts == attempt, Job.cancel_requested_at.is_(None)),
        worker=worker,
        detail=f"attempt {attempt}",
        returning=(Job.started_at,),
    )
    if row is None:
        return False
    extra: dict[str, Any] = {}
    if row.started_at is not None:
        extra["duration_s"] = max(0.0, (now - row.started_at).total_seconds())
    if metrics:
        _store_metrics(s, job_id, metrics)
    if references:
        used_id = _store_references(s, job_id, references)
        if used_id is not None:
            extra["reference_id"] = used_id
    if extra:
        s.execute(
            update(Job).where(Job.id == job_id).values(**extra).execution_options(synchronize_session="fetch")
        )
    return True


def fail_job(
    s: Session,
    job_id: str,
    attempt: int | None,
    code: str,
    message: str | None,
    *,
    worker: str | None = None,
) -> bool:
    """Move a job to ``failed`` with an error code; CAS like :func:`complete_job`.

    With ``attempt`` the job must be running that attempt (a worker's verdict). With ``None`` any
    active job is failed (e.g. bad input found before a worker ran it).
    """
    now = utcnow()
    values = {"error_code": code, "error_message": _truncate(message), "finished_at": now, "updated_at": now}
    if attempt is not None:
        extra = (Job.attempts == attempt,)
        return (
            _transition(s, job_id, JOB_RUNNING, JOB_FAILED, values, extra=extra, worker=worker, detail=code)
            is not None
        )
    return any(
        _transition(s, job_id, status, JOB_FAILED, values, worker=worker, detail=code) is not None
        for status in JOB_ACTIVE
    )


# --- the operator's side ----------------------------------------------------------------------


def retry_job(s: Session, tenant_id: str, job_id: str) -> Job:
    """Re-queue a failed job with a fresh attempt budget (its batch, if finished, reopens)."""
    now = utcnow()
    row = _transition(
        s,
        job_id,
        JOB_FAILED,
        JOB_QUEUED,
        {
            "attempts": 0,
            "error_code": None,
            "error_message": None,
            "output_key": None,
            "output_sha256": None,
            "review": None,
            "review_note": None,
            "cancel_requested_at": None,
            "worker": None,
            "queued_at": now,
            "sent_at": None,
            "started_at": None,
            "finished_at": None,
            "duration_s": None,
            "updated_at": now,
        },
        extra=(Job.tenant_id == tenant_id,),
        detail="retry requested",
        returning=(Job.batch_id,),
    )
    if row is None:
        job = get_job(s, tenant_id, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        raise InvalidTransition(f"job {job_id} is {job.status}; only failed jobs can be retried")
    if row.batch_id is not None:
        # The batch was (or may be) finished; put it back so finish_batches reports it again.
        s.execute(
            update(Batch)
            .where(Batch.id == row.batch_id, Batch.status == "finished")
            .values(status="submitted", finished_at=None)
            .execution_options(synchronize_session="fetch")
        )
    job = s.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def _release(s: Session, job_id: str, from_status: str, extra: Sequence[Any], detail: str) -> bool:
    """Put an active job back to queued and unsent, keeping its attempt count, so the next dispatch
    sends it again. A worker still holding it loses the race: its claim's attempt is now stale."""
    now = utcnow()
    values = {"sent_at": None, "worker": None, "started_at": None, "heartbeat_at": None, "updated_at": now}
    return _transition(s, job_id, from_status, JOB_QUEUED, values, extra=extra, detail=detail) is not None


def resend_job(s: Session, tenant_id: str | None, job_id: str, *, alive_within_s: float, force: bool = False) -> Job:
    """Release one queued or running job to be sent again (the operator's resend).

    Refused for finished jobs (``InvalidTransition``; a failed one is retried instead) and, unless
    ``force``, for a running job whose heartbeat is younger than ``alive_within_s`` (``JobStillRunning``).
    ``tenant_id=None`` is the operator's cross-tenant view.
    """
    owned = () if tenant_id is None else (Job.tenant_id == tenant_id,)
    job = s.execute(select(Job).where(Job.id == job_id, *owned)).scalar_one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job.status not in JOB_ACTIVE:
        hint = "; retry a failed job instead" if job.status == JOB_FAILED else ""
        raise InvalidTransition(f"job {job_id} is {job.status}; only queued or running jobs can be resent{hint}")
    last_beat = job.heartbeat_at or job.started_at
    if job.status == JOB_RUNNING and not force and last_beat is not None:
        silent_s = (utcnow() - last_beat).total_seconds()
        if silent_s < alive_within_s:
            raise JobStillRunning(
                f"job {job_id} is running on {job.worker} (heartbeat {silent_s:.0f} s ago); resend it with force "
                "to run it again anyway"
            )
    if not _release(s, job_id, job.status, (*owned,), "resend requested"):
        raise InvalidTransition(f"job {job_id} changed state meanwhile; look at it again")
    refreshed = s.get(Job, job_id, populate_existing=True)
    assert refreshed is not None
    return refreshed


def resend_stuck_batch_jobs(s: Session, tenant_id: str | None, batch_id: str, *, silent_for_s: float) -> list[str]:
    """Release every job of a batch that looks lost: running with no heartbeat for ``silent_for_s``,
    or sent to the broker that long ago and never started. Returns the released ids."""
    owned = () if tenant_id is None else (Batch.tenant_id == tenant_id,)
    if s.execute(select(Batch.id).where(Batch.id == batch_id, *owned)).first() is None:
        raise NotFound(f"batch {batch_id} not found")
    cut = utcnow() - timedelta(seconds=silent_for_s)
    lost = or_(
        and_(Job.status == JOB_RUNNING, func.coalesce(Job.heartbeat_at, Job.started_at) < cut),
        and_(Job.status == JOB_QUEUED, Job.sent_at < cut),
    )
    candidates = s.execute(select(Job.id, Job.status).where(Job.batch_id == batch_id, lost).order_by(Job.id)).all()
    # The same condition guards each release, so a job that started or beat meanwhile is left alone.
    guard = {
        JOB_RUNNING: (func.coalesce(Job.heartbeat_at, Job.started_at) < cut,),
        JOB_QUEUED: (Job.sent_at < cut,),
    }
    return [row.id for row in candidates if _release(s, row.id, row.status, guard[row.status], "resent as stuck")]


def forget_unsent_job(s: Session, job_id: str) -> bool:
    """Delete a job no task was ever sent for (its upload is answered 503 and retried by the client);
    False if it was sent meanwhile (it will run, so the upload stands)."""
    deleted = s.execute(
        delete(Job).where(Job.id == job_id, Job.status == JOB_QUEUED, Job.sent_at.is_(None)).returning(Job.batch_id)
    ).first()
    if deleted is not None:
        note_move(s, deleted.batch_id, JOB_QUEUED, None)
    return deleted is not None


def touch_heartbeat(s: Session, job_id: str) -> bool:
    """A worker process still runs the job; False once the job is no longer running."""
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JOB_RUNNING)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def find_stuck_jobs(
    s: Session,
    now: datetime,
    queued_older_than_s: float,
    running_older_than_s: float,
    limit: int = 500,
    heartbeat_older_than_s: float | None = None,
) -> list[str]:
    """Ids of jobs whose task was sent long ago but which never finished: the broker lost them, or
    (with ``heartbeat_older_than_s``) the worker running them stopped beating.

    Queued jobs count from ``sent_at`` (never-sent ones are the metering's business, not stuck);
    running jobs count from the later of ``started_at`` and ``sent_at``: a job that waited long in
    the queue and only just started is not stuck, and one that was just re-sent is not picked again
    on the next sweep.
    Served by the ``(status, sent_at)`` index.
    """
    q_cut = now - timedelta(seconds=queued_older_than_s)
    r_cut = now - timedelta(seconds=running_older_than_s)
    stuck = [
        and_(Job.status == JOB_QUEUED, Job.sent_at < q_cut),
        and_(Job.status == JOB_RUNNING, Job.started_at < r_cut, or_(Job.sent_at.is_(None), Job.sent_at < r_cut)),
    ]
    if heartbeat_older_than_s is not None:
        # A worker beats while it runs a job: silence means it was killed (SIGKILL, OOM, lost node).
        h_cut = now - timedelta(seconds=heartbeat_older_than_s)
        stuck.append(and_(Job.status == JOB_RUNNING, func.coalesce(Job.heartbeat_at, Job.started_at) < h_cut,
                          or_(Job.sent_at.is_(None), Job.sent_at < h_cut)))
    stmt = (
        select(Job.id)
        .where(or_(*stuck))
        .order_by(Job.sent_at, Job.id)
        .limit(limit)
    )
    return list(s.scalars(stmt))


def jobs_to_send(s: Session, tenant_backlog_limit: int) -> list[Job]:
    """The next jobs to hand to the broker, metered per tenant.

    Each tenant may have at most ``tenant_backlog_limit`` jobs in flight (running, or queued with a
    task already sent); it gets its oldest unsent queued jobs up to that room. The result is
    interleaved round-robin across tenants (fewest in flight first), so a small tenant's photos are
    not queued behind a large tenant's slice. The caller sends the tasks after commit, then calls
    :func:`mark_sent`.
    """
    if s.get_bind().dialect.name == "postgresql":
        # Dispatchers run at once (API requests, finishing workers, beat): serialise the metering so
        # each sees the others' in-flight counts; held until the caller's transaction commits.
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": METERING_LOCK_KEY})
    in_flight = dict(
        s.execute(
            select(Job.tenant_id, func.count())
            .where(or_(Job.status == JOB_RUNNING, and_(Job.status == JOB_QUEUED, Job.sent_at.is_not(None))))
            .group_by(Job.tenant_id)
        ).all()
    )
    waiting = s.scalars(
        select(Job.tenant_id).where(Job.status == JOB_QUEUED, Job.sent_at.is_(None)).distinct()
    ).all()
    per_tenant: list[list[Job]] = []
    # Least-served tenants first, so within each round-robin turn they go ahead.
    for tenant_id in sorted(waiting, key=lambda t: (in_flight.get(t, 0), t)):
        room = tenant_backlog_limit - in_flight.get(tenant_id, 0)
        if room <= 0:
            continue
        per_tenant.append(
            list(
                s.scalars(
                    select(Job)
                    .where(Job.tenant_id == tenant_id, Job.status == JOB_QUEUED, Job.sent_at.is_(None))
                    .order_by(Job.created_at, Job.id)
                    .limit(room)
                    # Two dispatchers at once (API requests, workers, beat) must not both send the same
                    # jobs: PostgreSQL skips rows another dispatch holds; SQLite serialises writers anyway.
                    .with_for_update(skip_locked=True)
                )
            )
        )
    interleaved: list[Job] = []
    for rank in range(max((len(jobs) for jobs in per_tenant), default=0)):
        interleaved.extend(jobs[rank] for jobs in per_tenant if rank < len(jobs))
    return interleaved


# --- results and figures ----------------------------------------------------------------------


def job_metrics(s: Session, job_id: str) -> dict[str, float]:
    rows = s.execute(select(QualityMetric.name, QualityMetric.value).where(QualityMetric.job_id == job_id))
    return {name: value for name, value in rows}


def job_reference_rows(s: Session, job_id: str) -> list[JobReference]:
    return list(
        s.scalars(select(JobReference).where(JobReference.job_id == job_id).order_by(JobReference.rank))
    )


def job_events(s: Session, job_id: str, kinds: Sequence[str] | None = (EVENT_STATUS,)) -> list[JobEvent]:
    """The job's events in order: its status changes by default, ``kinds=None`` for every kind
    (fixity checks, ingestion, review decisions, cancel requests too)."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if kinds is not None:
        stmt = stmt.where(JobEvent.kind.in_(list(kinds)))
    return list(s.scalars(stmt.order_by(JobEvent.id)))


def jobs_by_status(s: Session) -> dict[str, int]:
    """Job counts per status over all tenants (the Prometheus gauge); every status present."""
    counts = dict.fromkeys(JOB_STATUSES, 0)
    counts.update(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return counts


__all__ = [
    "ALREADY_TERMINAL",
    "CANCELLED",
    "CONFLICT",
    "NOT_FOUND",
    "ClaimResult",
    "check_reference_owner",
    "claim_job",
    "complete_job",
    "create_job",
    "fail_job",
    "find_stuck_jobs",
    "touch_heartbeat",
    "forget_unsent_job",
    "get_job",
    "get_job_any_tenant",
    "job_events",
    "job_metrics",
    "job_reference_rows",
    "jobs_by_status",
    "jobs_to_send",
    "mark_sent",
    "normalize_options",
    "record_events",
    "resend_job",
    "resend_stuck_batch_jobs",
    "retry_job",
]
