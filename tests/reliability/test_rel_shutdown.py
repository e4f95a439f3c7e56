"""Graceful shutdown: SIGTERM to a worker in the middle of a job (what Kubernetes and ``docker stop``
send to the container's main process) lets the running job finish, takes no new one, and leaves the
rest of the batch in the broker for the next worker.

Figures asserted: the running job succeeds on its first attempt while the worker shuts down; the
worker exits with status 0; the other jobs are still ``queued`` with their messages waiting in the
``restore`` list (none stranded in the ``unacked`` hash); a new worker finishes them all, every job
with exactly one attempt.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import pytest
from rel_support import (
    batch_figures,
    photo_bytes,
    record_figures,
    small_photos,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

LONG_SIDE = 1024  # seconds of work for the tiny model on a shared CPU: long enough to catch it running
WAITING = 5
TIMEOUT_S = 180.0


def test_sigterm_lets_the_running_job_finish_and_loses_nothing(cluster) -> None:
    worker = cluster.start_worker(concurrency=1)
    tenant = cluster.new_tenant()
    photos = [("large-scan.jpg", photo_bytes(LONG_SIDE, LONG_SIDE, seed=13)), *small_photos(WAITING)]
    _, ids = cluster.add_jobs(tenant, photos)
    long_job, waiting = ids[0], ids[1:]
    cluster.dispatch()
    wait_for(lambda: cluster.job(long_job).status == "running", TIMEOUT_S, "the long job to start", 0.05)

    signalled_at = datetime.now(UTC)
    os.kill(worker.pid, signal.SIGTERM)  # the main process only, as an orchestrator does
    signalled = time.monotonic()
    code = worker.wait(timeout=TIMEOUT_S)
    shutdown_s = time.monotonic() - signalled

    job = cluster.job(long_job)
    after = {j: cluster.job(j) for j in waiting}
    in_queue = cluster.queued_task_job_ids()
    stranded = set(cluster.unacked_task_job_ids())
    log = worker.log_text()
    assert "Warm shutdown" in log, log[-2000:]
    assert code == 0, f"the worker exited with {code}"
    assert (job.status, job.attempts) == ("succeeded", 1), (job.status, job.error_code, job.error_message)
    assert job.finished_at > signalled_at, "the job was still running when SIGTERM came, and finished"
    assert all(j.status == "queued" and j.attempts == 0 for j in after.values()), after
    assert sorted(in_queue) == sorted(waiting), "every waiting job's message is back in (or still in) the queue"
    assert not stranded & set(waiting)

    cluster.start_worker(concurrency=1)
    cluster.wait_finished(tenant, len(ids), TIMEOUT_S)
    figures = batch_figures(cluster, tenant)
    record_figures(
        "graceful_shutdown",
        running_job_duration_s=job.duration_s,
        shutdown_s=shutdown_s,
        exit_code=code,
        messages_waiting_after_shutdown=len(in_queue),
        figures=figures,
    )
    assert figures.succeeded == len(ids) and figures.attempts_histogram == {1: len(ids)}
    assert figures.result_objects == len(ids) and figures.corrupt() == 0
