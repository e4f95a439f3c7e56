"""Metering run concurrently must send each job once.

In production ``workers.dispatch.dispatch`` runs from beat's ``dispatch_queued_jobs`` and from every
pool process after each finished job (``_send_next``), so several run at the same moment. A job sent
twice is safe (claims are compare-and-set) but not free: when both copies are delivered while the job
runs, the second claims it from ``running`` (attempt + 1), the model runs twice, and the duplicates
count towards the dead-letter limit of ``job_max_attempts`` without any crash. The batch-kill test
saw exactly that (``a newer attempt owns this job`` in the worker log).

Here eight threads in a fresh process (configured, like a worker, from ``PIKFIX_*`` variables) call
the real ``dispatch`` at once against a real PostgreSQL database and a real Redis broker. Figures:
the number of messages per job found in the queue (must be 1: before ``jobs_to_send`` locked the rows
it hands out, every job was sent up to 8 times), and the number of one tenant's jobs in the broker
against its ``tenant_backlog_limit``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from rel_support import REPO_ROOT, message_job_id, record_figures

from db import repository as repo
from db.migrate import upgrade
from db.session import dispose_engine, session_scope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JOBS = 240
THREADS = 8

# Runs in its own interpreter so the workers' Celery app is configured from the environment, exactly
# as in a worker, and the test process's own (eager) app is left alone.
_DISPATCHERS = """
import json, sys, threading
from workers.dispatch import dispatch
from workers.runtime import get_runtime

runtime = get_runtime()
barrier = threading.Barrier(int(sys.argv[1]))
sent, errors = [], []

def run():
    try:
        barrier.wait(timeout=60)
        sent.append(dispatch(runtime))
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=run) for _ in range(int(sys.argv[1]))]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=120)
print(json.dumps({"sent": sent, "errors": errors}))
"""


class BacklogExceeded(AssertionError):
    """Concurrent metering put more of a tenant's jobs in the broker than its backlog allows."""


def _queue_counts(redis_server) -> Counter[str]:
    with redis_server.client() as r:
        raw = r.lrange("restore", 0, -1)
    return Counter(message_job_id(json.loads(m)) for m in raw)


def _race(redis_server, database_url: str, backlog: int) -> tuple[list[int], Counter[str]]:
    """JOBS queued jobs for one tenant, THREADS dispatchers at once; returns (sent per call, queue)."""
    upgrade(database_url)
    try:
        with session_scope(database_url) as s:
            tenant = repo.create_tenant(s, f"bureau-{uuid.uuid4().hex[:8]}").id
            for i in range(JOBS):
                key = f"{tenant}/originals/{uuid.uuid4().hex}.jpg"
                repo.create_job(s, tenant, None, key, None, f"scan{i:04d}.jpg", 1, {"reference_mode": "none"})
        env = {
            "PIKFIX_DATABASE_URL": database_url,
            "PIKFIX_BROKER_URL": redis_server.url,
            "PIKFIX_TENANT_BACKLOG_LIMIT": str(backlog),
        }
        out = subprocess.run(
            [sys.executable, "-c", _DISPATCHERS, str(THREADS)],
            env={**os.environ, **env},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert not result["errors"], result["errors"]
        return result["sent"], _queue_counts(redis_server)
    finally:
        dispose_engine(database_url)


def test_concurrent_dispatch_sends_each_job_once(fresh_redis_server, postgres_url) -> None:
    sent, per_job = _race(fresh_redis_server, postgres_url, backlog=JOBS)
    duplicates = sum(n - 1 for n in per_job.values() if n > 1)
    record_figures(
        "dispatch_race",
        jobs=JOBS,
        threads=THREADS,
        messages=sum(per_job.values()),
        reported_sent=sum(sent),
        duplicate_messages=duplicates,
        max_messages_per_job=max(per_job.values()),
    )
    assert sum(sent) == sum(per_job.values()), "what dispatch reports is what the broker holds"
    assert len(per_job) == JOBS and None not in per_job, "every job is in the queue"
    assert duplicates == 0, f"{duplicates} duplicate messages for {JOBS} jobs ({THREADS} concurrent dispatchers)"


def test_concurrent_dispatch_respects_the_tenant_backlog(fresh_redis_server, postgres_url) -> None:
    backlog = 30
    sent, per_job = _race(fresh_redis_server, postgres_url, backlog=backlog)
    in_broker = sum(per_job.values())
    record_figures("dispatch_backlog", backlog=backlog, threads=THREADS, in_broker=in_broker, sent_per_call=sent)
    assert sum(sent) == in_broker and max(per_job.values()) == 1
    if in_broker > backlog:
        raise BacklogExceeded(f"{in_broker} jobs of one tenant in the broker, backlog limit {backlog}")
