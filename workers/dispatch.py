"""Metering queued jobs from the database into the broker, fairly across tenants.

Jobs are committed first and sent afterwards (never the other way round), and each tenant has at most
``tenant_backlog_limit`` jobs in the broker at once, so one bureau's 50,000-photo archive cannot starve
another's ten photos: the rest wait in the database and are metered in as jobs finish.
"""

from __future__ import annotations

import logging

from db import repository as repo
from db.session import session_scope

log = logging.getLogger(__name__)


def send_jobs(job_ids: list[str]) -> list[str]:
    """Publish a restore task per job, in order; returns the ids the broker took.

    Stops at the first refusal and raises it as ``SendError`` carrying the ids sent before it, so the
    caller can record exactly those as sent.
    """
    from workers.tasks import restore_job

    sent: list[str] = []
    for job_id in job_ids:
        try:
            restore_job.apply_async(args=[job_id])
        except Exception as exc:
            raise SendError(sent, exc) from exc
        sent.append(job_id)
    return sent


class SendError(Exception):
    """Publishing failed after ``sent`` tasks went out (the broker is down or refused)."""

    def __init__(self, sent: list[str], cause: Exception) -> None:
        super().__init__(f"sent {len(sent)} task(s), then: {type(cause).__name__}: {cause}")
        self.sent = sent


def send_and_mark(s, job_ids: list[str]) -> int:
    """Send the jobs' tasks, then mark as sent exactly those the broker took, in the caller's transaction.

    A job counts as sent only once the broker has it: a broker outage leaves the rest unsent, for the
    next dispatch (every ``maintenance_interval_s``) to send as soon as the broker is back. A task that
    went out but whose mark is lost with the transaction is sent again later; the worker's
    compare-and-set claim runs it once.
    """
    try:
        sent = send_jobs(job_ids)
    except SendError as exc:
        repo.mark_sent(s, exc.sent)
        s.commit()
        raise
    repo.mark_sent(s, sent)
    return len(sent)


def dispatch(runtime) -> int:
    """Send up to each tenant's backlog allowance of not-yet-sent queued jobs; returns how many."""
    with session_scope(runtime.database_url) as s:
        job_ids = [j.id for j in repo.jobs_to_send(s, runtime.settings.tenant_backlog_limit)]
        if runtime.settings.eager:
            # In-process "sending" runs the job here, in its own transaction: mark first, then run.
            repo.mark_sent(s, job_ids)
        else:
            send_and_mark(s, job_ids)
    if runtime.settings.eager:
        send_jobs(job_ids)
    if job_ids:
        log.info("sent %d jobs", len(job_ids))
    return len(job_ids)


def dispatch_tenant(runtime, tenant_id: str) -> int:
    """After a tenant's jobs were committed (or one finished): meter in what fits. Metering is global
    so that the round-robin across tenants stays fair; ``tenant_id`` documents the trigger."""
    return dispatch(runtime)
