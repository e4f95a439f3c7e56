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


def send_jobs(job_ids: list[str]) -> None:
    from workers.tasks import restore_job

    for job_id in job_ids:
        restore_job.apply_async(args=[job_id])


def dispatch(runtime) -> int:
    """Send up to each tenant's backlog allowance of not-yet-sent queued jobs; returns how many."""
    with session_scope(runtime.database_url) as s:
        jobs = repo.jobs_to_send(s, runtime.settings.tenant_backlog_limit)
        job_ids = [j.id for j in jobs]
        repo.mark_sent(s, job_ids)
    # Marked sent and committed first: if publishing fails midway, the stuck-job sweep re-sends them.
    send_jobs(job_ids)
    if job_ids:
        log.info("sent %d jobs", len(job_ids))
    return len(job_ids)


def dispatch_tenant(runtime, tenant_id: str) -> int:
    """After a tenant's jobs were committed (or one finished): meter in what fits. Metering is global
    so that the round-robin across tenants stays fair; ``tenant_id`` documents the trigger."""
    return dispatch(runtime)
