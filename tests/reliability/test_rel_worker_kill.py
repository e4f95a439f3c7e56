"""Workers killed with SIGKILL mid-job, repeatedly, while a batch of a few hundred jobs runs.

Two kinds of kill, as production sees them:

- a pool process is killed (the OOM killer's way): ``acks_late`` + ``task_reject_on_worker_lost`` put
  its message back on the queue, a fresh pool process runs the job again (attempt 2);
- the whole worker is killed (node lost): its unacknowledged messages stay in Redis's ``unacked`` hash
  until the visibility timeout (the better part of an hour), so the stuck-job sweep must find the jobs
  from the database. The test lets that hour pass *for exactly those jobs* by moving their ``sent_at`` /
  ``started_at`` back three hours, then sends ``pikfix.maintenance.resend_stuck_jobs`` as beat would.

Figures asserted: every job succeeded exactly once (one ``running -> succeeded`` event), one result
object per job that decodes at the right size, no duplicate metric or reference rows, and the extra
attempts are bounded by the kills (each killed pool process costs at most the one job it was running).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from rel_support import (
    batch_figures,
    child_pids,
    pid_alive,
    record_figures,
    small_photos,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

JOBS = 300
CONCURRENCY = 2
# Pool-process kills at these fractions of the batch, then the whole worker once.
CHILD_KILL_AT = (0.08, 0.2, 0.32, 0.44, 0.56)
WORKER_KILL_AT = 0.7
BATCH_TIMEOUT_S = 420.0


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return -1
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busiest_child(worker_pid: int) -> int:
    """The pool process using the CPU right now: the one in the middle of a job."""
    children = child_pids(worker_pid)
    before = {pid: _cpu_ticks(pid) for pid in children}
    time.sleep(0.3)
    return max(children, key=lambda pid: _cpu_ticks(pid) - before[pid])


def test_sigkill_mid_job_repeatedly_every_job_succeeds_exactly_once(cluster) -> None:
    started = time.monotonic()
    worker = cluster.start_worker(concurrency=CONCURRENCY)
    tenant = cluster.new_tenant()
    _, ids = cluster.add_jobs(tenant, small_photos(JOBS))
    cluster.dispatch()

    # 1. Pool processes killed mid-job; the worker replaces each and the message is redelivered.
    child_kills = 0
    for fraction in CHILD_KILL_AT:
        cluster.wait_finished(tenant, JOBS, BATCH_TIMEOUT_S, at_least=int(JOBS * fraction))
        wait_for(lambda: cluster.status_counts(tenant)["running"], 30, "a job to be running", interval=0.02)
        victim = _busiest_child(worker.pid)
        os.kill(victim, signal.SIGKILL)
        child_kills += 1
        wait_for(
            lambda v=victim: not pid_alive(v) and len(child_pids(worker.pid)) == CONCURRENCY,
            60,
            "the worker to replace its killed pool process",
        )
    assert worker.alive(), "a pool-process kill must not take the worker down"
    landed = worker.log_text().count("Task handler raised error: WorkerLostError")

    # 2. The whole worker killed: what it had taken from the queue is in Redis's unacked hash only.
    cluster.wait_finished(tenant, JOBS, BATCH_TIMEOUT_S, at_least=int(JOBS * WORKER_KILL_AT))
    wait_for(lambda: cluster.status_counts(tenant)["running"], 30, "a job to be running", interval=0.02)
    worker.kill()
    active = set(cluster.active_job_ids(tenant))
    waiting = set(cluster.queued_task_job_ids())
    unacked = set(cluster.unacked_task_job_ids())
    lost = sorted(active - waiting)
    # Normally exactly the unacked ones; kombu takes a message off the list (BRPOP) before it records it
    # as unacked (HSET), so a kill in between loses it from Redis entirely: only the database knows.
    assert unacked & active <= set(lost), (lost, unacked)
    assert 1 <= len(lost) <= CONCURRENCY + 1, lost

    # 3. Beat's sweep, with the visibility-timeout hour passed for the lost jobs only.
    cluster.move_clock_back(lost)
    worker = cluster.start_worker(concurrency=CONCURRENCY)
    cluster.send("pikfix.maintenance.resend_stuck_jobs")
    wait_for(lambda: f"re-sent {len(lost)} stuck jobs" in worker.log_text(), 120, "the sweep to re-send")
    counts = cluster.wait_finished(tenant, JOBS, BATCH_TIMEOUT_S)
    elapsed = time.monotonic() - started

    figures = batch_figures(cluster, tenant)
    extra_attempts = sum(a * n for a, n in figures.attempts_histogram.items()) - JOBS
    # A job sent twice (see test_rel_dispatch_race) can be taken over by its duplicate while running:
    # the stale run then records nothing and says so. Those takeovers cost attempts too.
    takeovers = cluster.logs().count("a newer attempt owns this job")
    record_figures(
        "worker_sigkill",
        jobs=JOBS,
        child_kills=child_kills,
        child_kills_mid_job=landed,
        worker_kills=1,
        jobs_lost_by_broker=len(lost),
        lost_outside_unacked=len(set(lost) - unacked),
        extra_attempts=extra_attempts,
        duplicate_takeovers=takeovers,
        elapsed_s=elapsed,
        figures=figures,
    )
    assert counts["succeeded"] == JOBS and figures.succeeded == JOBS and figures.failed == 0
    assert figures.result_objects == JOBS  # one object per job, however many runs
    assert figures.jobs_succeeded_twice == 0 and figures.duplicate_metric_rows == 0
    assert figures.corrupt() == 0, figures
    assert landed >= 1, "no kill landed mid-job: the test did not exercise redelivery"
    # Each pool kill costs at most the job it ran; the node kill at most the jobs it held.
    assert 1 <= extra_attempts <= child_kills + len(lost) + takeovers, figures.attempts_histogram
    assert figures.max_attempts <= 3
    assert set(ids) == {j.id for j in cluster.jobs(tenant)}
