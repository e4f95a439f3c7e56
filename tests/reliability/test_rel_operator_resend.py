"""An operator resends jobs whose worker hangs, over real HTTP and the real CLI, with no beat running.

A restore worker is SIGSTOPped mid-job (it holds the job but stops beating). Resending is refused
while its heartbeat is fresh, accepted once it has gone silent; another worker then finishes the
job, and the frozen worker, when it wakes up, records nothing (its attempt is stale).
"""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
from helpers import photo_bytes
from rel_support import REPO_ROOT, batch_figures, cli_command, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

HEARTBEATS = {"PIKFIX_JOB_HEARTBEAT_S": "1", "PIKFIX_JOB_HEARTBEAT_TIMEOUT_S": "4", "PIKFIX_LOG_LEVEL": "info"}


def _frozen_mid_job(cluster, photos: int):
    """A worker per photo, all frozen (SIGSTOP) while running their job; returns (batch id, job ids, workers)."""
    victims = [cluster.start_worker(concurrency=1, queues="restore", extra_env=HEARTBEATS) for _ in range(photos)]
    cluster.start_worker(concurrency=1, queues="maintenance", extra_env=HEARTBEATS)  # runs the dispatch below
    tenant = cluster.new_tenant()
    # Big enough that the tiny model takes a few seconds: the stop lands mid-job.
    batch_id, job_ids = cluster.add_jobs(tenant, [(f"large{i}.jpg", photo_bytes(2400, 2000, seed=9 + i))
                                                  for i in range(photos)])
    cluster.dispatch()
    wait_for(lambda: all(cluster.job(j).status == "running" for j in job_ids), 120, "the jobs to start")
    for victim in victims:
        victim.send_signal(signal.SIGSTOP)
    return tenant, batch_id, job_ids, victims


def test_resend_route_refuses_a_live_job_then_resends_a_silent_one(cluster) -> None:
    api = cluster.start_api(HEARTBEATS)  # before the freeze: its start-up must not eat the heartbeat timeout
    tenant, _, (job_id,), (victim,) = _frozen_mid_job(cluster, 1)
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        r = http.post(f"/v1/jobs/{job_id}/resend")
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_still_running", r.text
        time.sleep(5)  # past the heartbeat timeout: the frozen worker is silent now
        r = http.post(f"/v1/jobs/{job_id}/resend")
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        cluster.start_worker(concurrency=1, queues="restore", extra_env=HEARTBEATS)
        wait_for(lambda: cluster.job(job_id).status == "succeeded", 180, "the resent job to finish")
        r = http.post(f"/v1/jobs/{job_id}/resend")
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_resendable", r.text
        assert http.post("/v1/jobs/00000000-0000-4000-8000-000000000000/resend").status_code == 404
    victim.send_signal(signal.SIGCONT)  # the stale run finishes its work but must record nothing
    time.sleep(3)
    figures = batch_figures(cluster, tenant, decode_results=False)
    assert figures.jobs_succeeded_twice == 0 and cluster.job(job_id).attempts == 2


def test_resend_command_resends_a_silent_job(cluster) -> None:
    _, _, (job_id,), _ = _frozen_mid_job(cluster, 1)
    env = cluster.worker_env(HEARTBEATS)
    run = subprocess.run([*cli_command(), "jobs", "resend", job_id], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3 and "heartbeat" in run.stderr, run.stderr
    time.sleep(5)
    run = subprocess.run([*cli_command(), "jobs", "resend", job_id], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and job_id in run.stdout, run.stderr
    cluster.start_worker(concurrency=1, queues="restore", extra_env=HEARTBEATS)
    wait_for(lambda: cluster.job(job_id).status == "succeeded", 180, "the resent job to finish")


def test_batch_resend_route_resends_only_the_silent_jobs(cluster) -> None:
    api = cluster.start_api(HEARTBEATS)
    tenant, batch_id, job_ids, victims = _frozen_mid_job(cluster, 2)
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        r = http.post(f"/v1/batches/{batch_id}/resend-stuck")
        assert r.status_code == 202 and r.json()["resent_job_ids"] == [], r.text  # heartbeats still fresh
        time.sleep(5)
        r = http.post(f"/v1/batches/{batch_id}/resend-stuck")
        assert r.status_code == 202, r.text
        assert sorted(r.json()["resent_job_ids"]) == sorted(job_ids)
        assert r.json()["batch"]["id"] == batch_id
        assert {cluster.job(j).status for j in job_ids} <= {"queued", "running"}
        cluster.start_worker(concurrency=1, queues="restore", extra_env=HEARTBEATS)
        wait_for(lambda: all(cluster.job(j).status == "succeeded" for j in job_ids), 240, "the resent jobs")
        r = http.post(f"/v1/batches/{batch_id}/resend-stuck", params={"silent_for_s": 1})
        assert r.status_code == 202 and r.json()["resent_job_ids"] == [], r.text  # finished jobs stay finished
        assert http.post(f"/v1/batches/{batch_id}/resend-stuck", params={"silent_for_s": 0}).status_code == 422
        assert http.post("/v1/batches/00000000-0000-4000-8000-000000000000/resend-stuck").status_code == 404
    other = cluster.new_tenant()  # another tenant cannot touch the batch
    with httpx.Client(base_url=api, headers=cluster.api_key(other), timeout=60) as http:
        assert http.post(f"/v1/batches/{batch_id}/resend-stuck").status_code == 404
    for victim in victims:
        victim.send_signal(signal.SIGCONT)
    time.sleep(3)
    assert batch_figures(cluster, tenant, decode_results=False).jobs_succeeded_twice == 0


def test_batch_resend_command_resends_the_silent_jobs(cluster) -> None:
    _, batch_id, (job_id,), _ = _frozen_mid_job(cluster, 1)
    env = cluster.worker_env(HEARTBEATS)
    time.sleep(5)
    run = subprocess.run([*cli_command(), "batches", "resend-stuck", batch_id], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == [job_id], (run.stdout, run.stderr)
    cluster.start_worker(concurrency=1, queues="restore", extra_env=HEARTBEATS)
    wait_for(lambda: cluster.job(job_id).status == "succeeded", 180, "the resent job to finish")
    run = subprocess.run([*cli_command(), "batches", "resend-stuck", "00000000-0000-4000-8000-000000000000"],
                         env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "not found" in run.stderr, run.stderr
