"""Batch counters kept in step with job transitions, so reading a batch's progress is one row.

Each transition notes its move in the session (``note_move``); the session's commit applies the
moves, one UPDATE per batch in id order, as its last statements. Taking the counter rows last and in
a fixed order means a transaction never waits for a job row while it holds a counter row, so workers
finishing jobs of one batch at once queue on the row instead of deadlocking. A rollback drops the
moves with the rest of the transaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, event, select, update
from sqlalchemy.orm import Session

from db.models import JOB_AWAITING_REVIEW, JOB_FAILED, JOB_STATUSES, JOB_SUCCEEDED, BatchCounts

_MOVES = "pikfix_batch_moves"
# A result awaiting review ran as much as one that succeeded: it counts in the throughput, and the
# decision that moves it on (succeeded, or failed when rejected) does not count it twice.
RAN_STATUSES = (JOB_SUCCEEDED, JOB_FAILED, JOB_AWAITING_REVIEW)


@dataclass
class _Moves:
    delta: Counter = field(default_factory=Counter)  # status (and "ran") -> change
    first_started_at: datetime | None = None
    last_finished_at: datetime | None = None


def note_move(
    s: Session,
    batch_id: str | None,
    from_status: str | None,
    to_status: str | None,
    n: int = 1,
    *,
    ran: int = 0,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> None:
    """Record that ``n`` jobs of a batch moved between statuses (``None``: created or deleted)."""
    if batch_id is None or n == 0:
        return
    moves = s.info.setdefault(_MOVES, {}).setdefault(batch_id, _Moves())
    if from_status is not None:
        moves.delta[from_status] -= n
    if to_status is not None:
        moves.delta[to_status] += n
    moves.delta["ran"] += ran
    if started_at is not None and (moves.first_started_at is None or started_at < moves.first_started_at):
        moves.first_started_at = started_at
    if finished_at is not None and (moves.last_finished_at is None or finished_at > moves.last_finished_at):
        moves.last_finished_at = finished_at


def _earlier(column: Any, value: datetime | None) -> Any:
    if value is None:
        return column
    return case((column.is_(None), value), (column > value, value), else_=column)


def _later(column: Any, value: datetime | None) -> Any:
    if value is None:
        return column
    return case((column.is_(None), value), (column < value, value), else_=column)


@event.listens_for(Session, "before_commit")
def _apply_moves(s: Session) -> None:
    pending: dict[str, _Moves] = s.info.pop(_MOVES, {})
    for batch_id in sorted(pending):
        moves = pending[batch_id]
        values: dict[str, Any] = {
            name: getattr(BatchCounts, name) + change for name, change in moves.delta.items() if change
        }
        if moves.first_started_at is not None:
            values["first_started_at"] = _earlier(BatchCounts.first_started_at, moves.first_started_at)
        if moves.last_finished_at is not None:
            values["last_finished_at"] = _later(BatchCounts.last_finished_at, moves.last_finished_at)
        if values:
            s.execute(update(BatchCounts).where(BatchCounts.batch_id == batch_id).values(**values)
                      .execution_options(synchronize_session=False))


@event.listens_for(Session, "after_rollback")
def _drop_moves(s: Session) -> None:
    s.info.pop(_MOVES, None)


def counts_of(s: Session, batch_ids: list[str]) -> dict[str, BatchCounts]:
    """The counter rows of these batches (those that exist), by batch id, with the moves this session
    has yet to apply added in (detached copies, so nothing is written twice)."""
    rows = s.scalars(select(BatchCounts).where(BatchCounts.batch_id.in_(batch_ids))) if batch_ids else []
    out = {row.batch_id: row for row in rows}
    pending: dict[str, _Moves] = s.info.get(_MOVES, {})
    for batch_id in set(out) & set(pending):
        row, moves = out[batch_id], pending[batch_id]
        names = (*JOB_STATUSES, "ran")
        copy = BatchCounts(batch_id=batch_id, **{n: getattr(row, n) + moves.delta.get(n, 0) for n in names})
        copy.first_started_at = min(filter(None, (row.first_started_at, moves.first_started_at)), default=None)
        copy.last_finished_at = max(filter(None, (row.last_finished_at, moves.last_finished_at)), default=None)
        out[batch_id] = copy
    return out


def status_counts(row: BatchCounts | None) -> dict[str, int]:
    """Every job status with its count (zeros for a batch with no row)."""
    return {st: (getattr(row, st) if row is not None else 0) for st in JOB_STATUSES}
