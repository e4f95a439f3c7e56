"""The rows a provenance export is built from: jobs, every event they recorded, the references used.

A PREMIS document (``workers.premis``) describes one job or a whole batch; it needs each job's row, all
of its events (status changes, ingestion, fixity checks, review decisions, cancel requests) and the
colour reference each result was made from. These queries read them in a few round trips, scoped by
tenant so another tenant's id reads as nothing. Fixity events themselves are written by
``db.control.record_fixity``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.batches import get_batch
from db.jobs import get_job
from db.models import Batch, Job, JobEvent, JobReference, Reference

_IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's bound-parameter limit


@dataclass
class Provenance:
    """One job's or one batch's rows: jobs in creation order, their events in order, references used."""

    jobs: list[Job]
    events: dict[str, list[JobEvent]] = field(default_factory=dict)
    references: dict[str, Reference] = field(default_factory=dict)  # job id -> the reference it used
    batch: Batch | None = None


def job_provenance(s: Session, tenant_id: str, job_id: str) -> Provenance | None:
    """The job's provenance rows, or ``None`` when it is not the tenant's."""
    job = get_job(s, tenant_id, job_id)
    return None if job is None else _collect(s, [job])


def batch_provenance(s: Session, tenant_id: str, batch_id: str) -> Provenance | None:
    """The provenance rows of every job of the batch, or ``None`` when it is not the tenant's."""
    batch = get_batch(s, tenant_id, batch_id)
    if batch is None:
        return None
    jobs = list(s.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)))
    prov = _collect(s, jobs)
    prov.batch = batch
    return prov


def _collect(s: Session, jobs: list[Job]) -> Provenance:
    ids = [j.id for j in jobs]
    return Provenance(jobs=jobs, events=_events(s, ids), references=_used_references(s, ids))


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + _IN_CHUNK]) for i in range(0, len(ids), _IN_CHUNK)]


def _events(s: Session, job_ids: Sequence[str]) -> dict[str, list[JobEvent]]:
    """Every event of these jobs, of every kind, in the order they were written."""
    events: dict[str, list[JobEvent]] = defaultdict(list)
    for chunk in _chunks(job_ids):
        for event in s.scalars(select(JobEvent).where(JobEvent.job_id.in_(chunk)).order_by(JobEvent.id)):
            events[event.job_id].append(event)
    return dict(events)


def _used_references(s: Session, job_ids: Sequence[str]) -> dict[str, Reference]:
    """The reference each job's result was coloured from (its candidate marked ``used``)."""
    used: dict[str, Reference] = {}
    for chunk in _chunks(job_ids):
        rows = s.execute(
            select(JobReference.job_id, Reference)
            .join(Reference, Reference.id == JobReference.reference_id)
            .where(JobReference.job_id.in_(chunk), JobReference.used.is_(True))
        ).all()
        used.update({job_id: ref for job_id, ref in rows})
    return used


__all__ = ["Provenance", "batch_provenance", "job_provenance"]
