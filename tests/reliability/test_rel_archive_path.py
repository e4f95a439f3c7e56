"""The bulk path over real HTTP: archives, loose photos and presigned archives in one batch, with the
ingest worker stopped, Redis restarted, the broker down and a whole worker SIGKILLed mid-job.

``pikfix api``, a restore worker, a separate ingest worker and ``pikfix beat`` (every second) run on
a private redis-server (append-only file on), a fresh PostgreSQL database and moto's S3 server.
Figures asserted: every photo sent becomes exactly one job that succeeds exactly once, a submitted
batch waits for its archives, nothing accepted is dropped, and a killed worker's job runs again
within minutes (heartbeats), not after the hard time limit.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from helpers import ZipEntry, photo_bytes, zip_bytes
from rel_support import batch_figures, record_figures, small_photos, wait_for

from db import repository as repo
from db.session import session_scope

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

FAST_MAINTENANCE = {
    "PIKFIX_MAINTENANCE_INTERVAL_S": "1",
    "PIKFIX_JOB_STUCK_AFTER_S": "20",
    "PIKFIX_JOB_HEARTBEAT_S": "1",
    "PIKFIX_JOB_HEARTBEAT_TIMEOUT_S": "6",
    "PIKFIX_LOG_LEVEL": "info",
}


def _zip(photos: list[tuple[str, bytes]]) -> bytes:
    return zip_bytes([ZipEntry(name, data) for name, data in photos])


def _batch(http: httpx.Client, batch_id: str) -> dict:
    r = http.get(f"/v1/batches/{batch_id}")
    assert r.status_code == 200, r.text
    return r.json()


def _start(cluster, restore_concurrency: int = 2):
    cluster.start_worker(concurrency=restore_concurrency, queues="restore,maintenance", extra_env=FAST_MAINTENANCE)
    ingest = cluster.start_worker(concurrency=1, queues="ingest", extra_env=FAST_MAINTENANCE)
    cluster.start_beat(FAST_MAINTENANCE)
    api = cluster.start_api(FAST_MAINTENANCE)
    return ingest, api


def test_500_photos_as_archives_loose_and_presigned_with_ingest_stopped_and_redis_restarted(cluster) -> None:
    ingest, api = _start(cluster)
    tenant = cluster.new_tenant()
    photos = small_photos(500, side=40, distinct=16)
    loose, archived, presigned = photos[:100], [photos[100 + 100 * i: 200 + 100 * i] for i in range(3)], photos[400:]
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        batch = http.post("/v1/batches", json={"name": "bulk", "options": {"reference_mode": "none"}}).json()
        bid = batch["id"]
        r = http.post(f"/v1/batches/{bid}/photos", files=[("files", (n, d, "image/jpeg")) for n, d in loose[:50]])
        assert r.status_code == 201, r.text
        r = http.post(f"/v1/batches/{bid}/archive", files={"file": ("a0.zip", _zip(archived[0]), "application/zip")})
        assert r.status_code == 202, r.text

        ingest.send_signal(signal.SIGSTOP)  # the ingest worker is busy (or hung) from here on
        for i in (1, 2):
            r = http.post(f"/v1/batches/{bid}/archive",
                          files={"file": (f"a{i}.zip", _zip(archived[i]), "application/zip")})
            assert r.status_code == 202, r.text
        r = http.post(f"/v1/batches/{bid}/photos", files=[("files", (n, d, "image/jpeg")) for n, d in loose[50:]])
        assert r.status_code == 201, r.text
        # An archive bigger than the API takes goes straight to S3 and is unpacked from there.
        upload = http.post(f"/v1/batches/{bid}/uploads", json={"files": ["big.zip"]}).json()["uploads"][0]
        assert httpx.put(upload["url"], content=_zip(presigned), timeout=60).status_code == 200
        submitted = http.post(f"/v1/batches/{bid}/submit")
        assert submitted.status_code == 200, submitted.text
        assert submitted.json()["archives"] == 1 and submitted.json()["registered"] == 0

        cluster.redis.kill()  # a crash while archives wait: the AOF keeps the ingest messages
        time.sleep(2)
        cluster.redis.start()
        time.sleep(3)
        waiting = _batch(http, bid)
        assert waiting["status"] == "submitted" and waiting["pending_archives"] >= 2, waiting
        ingest.send_signal(signal.SIGCONT)

        done = wait_for(lambda: (b := _batch(http, bid))["status"] == "finished" and b, 420,
                        "the batch to finish", interval=1.0)
        archives = http.get(f"/v1/batches/{bid}/archives").json()["items"]

    figures = batch_figures(cluster, tenant, decode_results=False)
    record_figures("archive_path_500", figures=figures, archives=archives, total_jobs=done["total_jobs"])
    assert done["total_jobs"] == 500 and done["pending_archives"] == 0
    assert figures.total == 500 and figures.succeeded == 500, figures
    assert figures.jobs_succeeded_twice == 0 and figures.corrupt() == 0
    assert sorted(a["created_jobs"] for a in archives) == [100, 100, 100, 100]
    assert {a["status"] for a in archives} == {"ingested"}


def test_empty_archives_are_refused_and_presigned_ones_fail_visibly(cluster) -> None:
    _, api = _start(cluster, restore_concurrency=1)
    tenant = cluster.new_tenant()
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        bid = http.post("/v1/batches", json={"name": "empty", "options": {"reference_mode": "none"}}).json()["id"]
        r = http.post(f"/v1/batches/{bid}/archive", files={"file": ("e.zip", _zip([]), "application/zip")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "archive_empty", r.text
        assert http.post(f"/v1/batches/{bid}/submit").json()["error"]["code"] == "batch_empty"

        upload = http.post(f"/v1/batches/{bid}/uploads", json={"files": ["e.zip"]}).json()["uploads"][0]
        assert httpx.put(upload["url"], content=_zip([]), timeout=60).status_code == 200
        assert http.post(f"/v1/batches/{bid}/submit").status_code == 200
        done = wait_for(lambda: (b := _batch(http, bid))["status"] == "finished" and b, 120, "the batch to finish")
        jobs = http.get(f"/v1/batches/{bid}/jobs").json()["items"]
        archives = http.get(f"/v1/batches/{bid}/archives").json()["items"]
    assert done["total_jobs"] == 1 and [(j["input_name"], j["error"]["code"]) for j in jobs] == [
        ("e.zip", "archive_empty")]
    assert [(a["status"], a["error_code"]) for a in archives] == [("failed", "archive_empty")]


def test_broker_down_single_upload_is_refused_and_batch_jobs_run_after_it_returns(cluster) -> None:
    _, api = _start(cluster, restore_concurrency=1)
    tenant = cluster.new_tenant()
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        bid = http.post("/v1/batches", json={"name": "outage", "options": {"reference_mode": "none"}}).json()["id"]
        cluster.redis.stop()
        try:
            r = http.post("/v1/jobs", files={"file": ("one.jpg", photo_bytes(48, 40), "image/jpeg")},
                          data={"reference_mode": "none"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable", r.text
            r = http.post(f"/v1/batches/{bid}/photos",
                          files=[("files", (n, d, "image/jpeg")) for n, d in small_photos(6, side=40)])
            assert r.status_code == 201, r.text
            ids = [j["id"] for j in r.json()["jobs"]]
            with session_scope(cluster.database_url) as s:
                assert sum(repo.jobs_by_status(s).values()) == 6  # the refused upload left no job behind
                assert all(repo.get_job(s, tenant, i).sent_at is None for i in ids)
        finally:
            cluster.redis.start()
        back = time.monotonic()
        assert http.post(f"/v1/batches/{bid}/submit").status_code == 200
        wait_for(lambda: _batch(http, bid)["status"] == "finished", 90, "the batch to finish after the outage")
    assert time.monotonic() - back < 60, "jobs accepted during the outage run within a minute of its end"
    assert batch_figures(cluster, tenant, decode_results=False).succeeded == 6


def test_whole_worker_sigkilled_mid_job_its_job_finishes_within_minutes(cluster) -> None:
    victim = cluster.start_worker(concurrency=1, queues="restore", extra_env=FAST_MAINTENANCE)
    cluster.start_beat(FAST_MAINTENANCE)
    cluster.start_worker(concurrency=1, queues="maintenance", extra_env=FAST_MAINTENANCE)
    tenant = cluster.new_tenant()
    # Big enough that the tiny model takes a few seconds: the kill lands mid-job.
    _, (job_id,) = cluster.add_jobs(tenant, [("large.jpg", photo_bytes(2400, 2000, seed=9))])
    cluster.dispatch()
    wait_for(lambda: cluster.job(job_id).status == "running", 120, "the job to start")
    time.sleep(0.5)
    victim.kill()  # SIGKILL to the main process and its pool: the message stays unacked in Redis
    killed_at = time.monotonic()
    assert cluster.job(job_id).status == "running"
    cluster.start_worker(concurrency=1, queues="restore", extra_env=FAST_MAINTENANCE)
    wait_for(lambda: cluster.job(job_id).status == "succeeded", 180, "the killed worker's job to finish")
    took = time.monotonic() - killed_at
    figures = batch_figures(cluster, tenant, decode_results=False)
    record_figures("worker_sigkill_heartbeat", finished_after_s=took, figures=figures)
    assert took < 180 and figures.jobs_succeeded_twice == 0 and cluster.job(job_id).attempts == 2
