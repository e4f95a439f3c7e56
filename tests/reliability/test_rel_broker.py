"""The Redis broker restarted, and the broker's data lost entirely, in the middle of a batch.

A real ``pikfix worker`` and ``pikfix beat`` run against a private redis-server with the append-only
file on (``appendfsync always``, as the fixtures start it). Beat runs the maintenance tasks every
2 s; the sweep counts a queued job as stuck 15 s after it was sent (``PIKFIX_JOB_STUCK_AFTER_S=15``:
the production default is an hour) and each tenant has at most 8 jobs in the broker
(``PIKFIX_TENANT_BACKLOG_LIMIT=8``), so the database holds the rest and a lost message costs at
most 8 jobs. Nothing in the test moves clocks or sends maintenance tasks: beat does it all.

Figures asserted:
- Redis SIGKILLed and restarted at job ~30 of 90: the queued messages come back from the AOF, all
  90 jobs succeed exactly once, the sweep re-sends at most the backlog (the jobs metering marked
  sent while the broker was down);
- Redis flushed (``FLUSHALL``: queues, unacked messages and bindings gone) at job ~30 of 90: the
  jobs whose messages vanished are re-sent by the sweep (at least as many as were lost, at most the
  backlog of 8 more), all 90 succeed exactly once.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from rel_support import (
    RedisServer,
    batch_figures,
    make_cluster,
    message_job_id,
    poll_until,
    record_figures,
    small_photos,
    tiny_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

JOBS = 90
FAULT_AT = 30
BACKLOG = 8
STUCK_AFTER_S = 15
TIMEOUT_S = 240.0
ENV = {
    "PIKFIX_TENANT_BACKLOG_LIMIT": str(BACKLOG),
    "PIKFIX_JOB_STUCK_AFTER_S": str(STUCK_AFTER_S),
    "PIKFIX_MAINTENANCE_INTERVAL_S": "2",
}


@pytest.fixture(scope="module")
def broker_cluster(tmp_path_factory, postgres_admin, moto_server):
    root = tmp_path_factory.mktemp("rel-broker")
    redis = RedisServer(root / "redis").start()
    try:
        with (
            postgres_admin.fresh_database() as url,
            make_cluster(
                root=root,
                redis=redis,
                database_url=url,
                moto_server=moto_server,
                checkpoint=tiny_checkpoint(tmp_path_factory),
                base_env=ENV,
            ) as cluster,
        ):
            cluster.start_worker(concurrency=1)
            cluster.beat = cluster.start_beat()
            yield cluster
    finally:
        redis.kill()


@pytest.fixture
def cluster(broker_cluster):
    if not broker_cluster.redis.running:
        broker_cluster.redis.start()
    return broker_cluster


def _resent_since(cluster, offset: int) -> int:
    text = cluster.workers[-1].log_text()[offset:]
    return sum(int(n) for n in re.findall(r"re-sent (\d+) stuck jobs", text))


class TaskFailedAfterSuccess(AssertionError):
    """A restore task whose job succeeded was reported to Celery as failed."""


def test_redis_restarted_mid_batch_keeps_its_queue(cluster) -> None:
    tenant = cluster.new_tenant()
    log_offset = len(cluster.workers[-1].log_text())
    cluster.add_jobs(tenant, small_photos(JOBS))
    cluster.dispatch()
    cluster.wait_finished(tenant, JOBS, TIMEOUT_S, at_least=FAULT_AT)

    with cluster.redis.client() as r:
        queued_before = r.llen("restore")
    cluster.redis.kill()  # a crash: only what the append-only file holds comes back
    down_at = time.monotonic()
    time.sleep(3)
    cluster.redis.start()
    with cluster.redis.client() as r:
        queued_after = r.llen("restore")
    finished_at_restart = cluster.finished(tenant)
    cluster.wait_finished(tenant, JOBS, TIMEOUT_S)
    recovered_s = time.monotonic() - down_at

    figures = batch_figures(cluster, tenant)
    resent = _resent_since(cluster, log_offset)
    failed_tasks = cluster.workers[-1].log_text()[log_offset:].count("raised unexpected: OperationalError")
    record_figures(
        "redis_restart",
        tasks_failed_after_their_job_succeeded=failed_tasks,
        jobs=JOBS,
        finished_at_restart=finished_at_restart,
        queued_before_kill=queued_before,
        queued_after_restart=queued_after,
        resent_by_sweep=resent,
        all_done_after_s=recovered_s,
        figures=figures,
    )
    assert queued_after >= 1, "the queue must come back from the append-only file"
    assert figures.succeeded == JOBS and figures.failed == 0, figures
    assert figures.result_objects == JOBS and figures.corrupt() == 0
    # What the sweep re-sends here are the jobs metering marked sent while the broker was down.
    assert resent <= BACKLOG
    if failed_tasks:
        raise TaskFailedAfterSuccess(f"{failed_tasks} restore task(s) raised after their job had succeeded")


def test_redis_flushed_mid_batch_the_sweep_resends_what_was_lost(cluster) -> None:
    tenant = cluster.new_tenant()
    log_offset = len(cluster.workers[-1].log_text())
    cluster.add_jobs(tenant, small_photos(JOBS))
    cluster.dispatch()
    cluster.wait_finished(tenant, JOBS, TIMEOUT_S, at_least=FAULT_AT)

    # Read the queue and flush everything (queues, unacked messages, kombu's bindings) in one MULTI,
    # so no delivery slips in between: the jobs whose messages were waiting are exactly those lost.
    with cluster.redis.client() as r, r.pipeline(transaction=True) as multi:
        waiting, _ = multi.lrange("restore", 0, -1).flushall().execute()
    flushed_at = time.monotonic()
    lost = {message_job_id(json.loads(m)) for m in waiting}
    resent = poll_until(lambda: _resent_since(cluster, log_offset), STUCK_AFTER_S + 60, interval=0.5)
    resent_after_s = time.monotonic() - flushed_at
    cluster.wait_finished(tenant, JOBS, TIMEOUT_S)
    recovered_s = time.monotonic() - flushed_at

    figures = batch_figures(cluster, tenant)
    resent = _resent_since(cluster, log_offset)
    record_figures(
        "redis_flush",
        jobs=JOBS,
        messages_lost=len(lost),
        resent_by_sweep=resent,
        first_resend_after_s=resent_after_s,
        all_done_after_s=recovered_s,
        figures=figures,
    )
    assert 1 <= len(lost) <= BACKLOG, "the flush must have cost some queued messages"
    assert len(lost) <= resent <= len(lost) + BACKLOG, "the sweep re-sends what the broker lost"
    assert figures.succeeded == JOBS and figures.failed == 0, figures
    assert figures.result_objects == JOBS and figures.corrupt() == 0
