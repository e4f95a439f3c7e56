"""Beat tasks: the database is the source of truth, the broker only a delivery mechanism.

- ``resend_stuck_jobs``: jobs queued-and-sent or running for longer than the deadline are sent again
  (the broker may have lost them: Redis restarted or flushed, a worker vanished). Sending twice is safe:
  the claim and completion are compare-and-set, results go to deterministic keys.
- ``dispatch_queued_jobs``: meters waiting jobs into the broker within each tenant's backlog allowance.
- ``resend_pending_archives``: accepted archives whose ingest task was never sent or was lost are sent.
- ``reindex_pending_references``: references whose index task was lost are sent again.
- ``finish_batches``: marks batches whose jobs are all terminal as finished, writes the batch report and
  calls the batch webhook. A cancelled batch gets the same, report and webhook (status ``cancelled``), once
  the jobs still running when it was cancelled have ended, so its report shows what each photo became.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from db import repository as repo
from db.session import session_scope
from workers.app import app
from workers.dispatch import dispatch, send_and_mark
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name="pikfix.maintenance.resend_stuck_jobs")
def resend_stuck_jobs() -> int:
    runtime = get_runtime()
    s_ = runtime.settings
    with session_scope(runtime.database_url) as s:
        job_ids = repo.find_stuck_jobs(
            s,
            now=datetime.now(UTC),
            queued_older_than_s=s_.job_stuck_after_s,
            running_older_than_s=s_.job_hard_time_limit_s + 60,
            limit=1000,
            heartbeat_older_than_s=s_.job_heartbeat_timeout_s,
        )
        send_and_mark(s, job_ids)
    if job_ids:
        log.warning("re-sent %d stuck jobs", len(job_ids))
    return len(job_ids)


@app.task(name="pikfix.maintenance.resend_pending_archives")
def resend_pending_archives() -> int:
    """Send ingest tasks for archives still pending: never sent (the broker was down when they came
    with a submit) or sent long ago (the broker lost the message). Ingesting twice is safe."""
    from workers.tasks import ingest_archive

    runtime = get_runtime()
    with session_scope(runtime.database_url) as s:
        archive_ids = repo.archives_to_resend(s, datetime.now(UTC), sent_before_s=runtime.settings.job_stuck_after_s)
        sent = []
        try:
            for archive_id in archive_ids:
                ingest_archive.apply_async(args=[archive_id])
                sent.append(archive_id)
        finally:
            repo.mark_archives_sent(s, sent)
    if sent:
        log.warning("sent %d pending archive ingest tasks", len(sent))
    return len(sent)


@app.task(name="pikfix.maintenance.reindex_pending_references")
def reindex_pending_references() -> int:
    """Re-send index tasks for references stuck in ``pending`` (indexing is idempotent)."""
    from workers.tasks import index_reference

    runtime = get_runtime()
    with session_scope(runtime.database_url) as s:
        ref_ids = repo.stale_pending_references(s, datetime.now(UTC), older_than_s=runtime.settings.job_stuck_after_s)
    for ref_id in ref_ids:
        index_reference.apply_async(args=[ref_id])
    if ref_ids:
        log.warning("re-sent %d pending reference index tasks", len(ref_ids))
    return len(ref_ids)


@app.task(name="pikfix.maintenance.dispatch_queued_jobs")
def dispatch_queued_jobs() -> int:
    return dispatch(get_runtime())


@app.task(name="pikfix.maintenance.finish_batches")
def finish_batches() -> list[str]:
    from workers.batch_report import publish_batch_report
    from workers.webhooks import call_batch_webhook

    runtime = get_runtime()
    with session_scope(runtime.database_url) as s:
        finished = [b.id for b in repo.finish_batches(s)]
    for batch_id in finished:
        try:
            publish_batch_report(runtime, batch_id)
        except Exception:
            log.exception("report for batch %s failed", batch_id)
        try:  # its own task, retried by Celery; one batch's failure to send it must not cost the others
            call_batch_webhook.delay(batch_id)
        except Exception:
            log.exception("webhook for batch %s failed", batch_id)
    return finished
