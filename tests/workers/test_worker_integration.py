"""The job system against real parts: a real ``pikfix worker`` (Celery prefork) subprocess, a private
redis-server as broker, a fresh PostgreSQL database and a moto S3 bucket.

The test process plays the API: it writes rows with the ``db`` functions, originals with
``storage`` and sends tasks *by name* through its own small Celery client, so it never depends
on how ``workers.app`` was configured when this process imported it.

One worker serves the whole module (starting one costs seconds on a shared CPU); the tests that kill it
start the next. Each test works in its own tenant, so object listings and counts are its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ALWAYS_RECORDED_METRICS,
    NOT_AN_IMAGE,
    REPO_ROOT,
    TINY_MODEL_NAME,
    WORKING_SIZE,
    TinyCheckpoint,
    ZipEntry,
    child_pids,
    photo_bytes,
    pid_alive,
    tiny_checkpoint,
    truncated_jpeg,
    wait_for,
    zip_bytes,
)
from PIL import Image
from sqlalchemy import update

try:  # tests/ is on sys.path (no packages); see tests/conftest.py
    from fixtures.moto_service import MotoServer, S3Bucket
    from fixtures.postgres_service import PostgresAdmin
    from fixtures.processes import ManagedProcess, ProcessGroup
    from fixtures.redis_service import RedisServer, redis_server_binary
except ModuleNotFoundError:  # pragma: no cover - tests/ imported as a package
    from tests.fixtures.moto_service import MotoServer, S3Bucket
    from tests.fixtures.postgres_service import PostgresAdmin
    from tests.fixtures.processes import ManagedProcess, ProcessGroup
    from tests.fixtures.redis_service import RedisServer, redis_server_binary

from db import repository as repo
from db.migrate import upgrade
from db.models import Job
from db.session import dispose_engine, session_scope
from storage import put_content_addressed, report_key, result_key, upload_key
from workers.webhooks import SIGNATURE_HEADER, sign

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

QUEUES = "restore,ingest,maintenance"
JOB_TIMEOUT_S = 180.0  # generous: the CPU is shared with other test runs
# Large enough that the tiny model works on it for seconds (see the report figures), so a test can
# catch the job ``running`` and kill its process; small enough to keep the module quick.
LONG_PHOTO_SIDE = 1024
WEBHOOK_SECRET = "integration-secret"


@dataclass
class Cluster:
    """Broker, database, bucket and the current worker, plus the calls the tests make on them."""

    redis: RedisServer
    database_url: str
    bucket: S3Bucket
    checkpoint: TinyCheckpoint
    processes: ProcessGroup
    data_dir: Path
    client: Any = None
    worker: ManagedProcess | None = None
    worker_name: str = ""
    store: Any = field(default=None, repr=False)

    # -- processes

    def worker_env(self) -> dict[str, str]:
        return {
            **self.bucket.env,
            "PIKFIX_BROKER_URL": self.redis.url,
            "PIKFIX_DATABASE_URL": self.database_url,
            "PIKFIX_CHECKPOINT": str(self.checkpoint.path),
            "PIKFIX_WORKING_SIZE": str(WORKING_SIZE),
            "PIKFIX_DEVICE": "cpu",
            "PIKFIX_DATA_DIR": str(self.data_dir),
            "PIKFIX_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "PIKFIX_WEBHOOK_ALLOW_PRIVATE": "true",  # the test's receiver listens on loopback
            "PYTHONUNBUFFERED": "1",
        }

    def start_worker(self) -> ManagedProcess:
        self.worker_name = f"w{uuid.uuid4().hex[:6]}@pikfix-test"
        script = Path(sys.executable).with_name("pikfix")
        base = (
            [str(script)]
            if script.is_file()
            else [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]
        )
        cmd = base + ["worker", "--queues", QUEUES, "--concurrency", "1", "--hostname", self.worker_name]
        ready_line = f"{self.worker_name} ready."
        self.worker = self.processes.start(
            cmd,
            env=self.worker_env(),
            ready=lambda proc: ready_line in proc.log_text() and bool(child_pids(proc.pid)),
            cwd=REPO_ROOT,
            timeout=180,
            name=f"worker-{self.worker_name.split('@')[0]}",
        )
        return self.worker

    def ensure_worker(self) -> ManagedProcess:
        if self.worker is None or not self.worker.alive():
            if self.worker is not None:
                self.worker.kill()
            self.start_worker()
        assert self.worker is not None
        return self.worker

    def pool_child(self) -> int:
        assert self.worker is not None
        (child,) = wait_for(lambda: child_pids(self.worker.pid), 60, "the worker's pool process")
        return child

    def log(self) -> str:
        return self.worker.log_text() if self.worker else ""

    # -- tasks and rows

    def send(self, task: str, *args: Any) -> None:
        self.client.send_task(task, args=list(args))

    def new_tenant(self) -> str:
        with session_scope(self.database_url) as s:
            return repo.create_tenant(s, f"bureau-{uuid.uuid4().hex[:8]}").id

    def add_jobs(
        self, tenant_id: str, photos: list[tuple[str, bytes]], options: dict | None = None, batch: bool = True
    ) -> tuple[str | None, list[str]]:
        """Originals into S3, then the batch and its queued jobs committed (nothing sent yet)."""
        keys = [
            (name, data, put_content_addressed(self.store, tenant_id, data, Path(name).suffix))
            for name, data in photos
        ]
        with session_scope(self.database_url) as s:
            batch_id = repo.create_batch(s, tenant_id, "album", options).id if batch else None
            ids = [
                repo.create_job(s, tenant_id, batch_id, key, sha, name, len(data), options).id
                for name, data, (key, sha, _) in keys
            ]
            if batch_id:
                repo.submit_batch(s, tenant_id, batch_id)
        return batch_id, ids

    def dispatch(self) -> None:
        self.send("pikfix.maintenance.dispatch_queued_jobs")

    def job(self, job_id: str) -> Job:
        with session_scope(self.database_url, readonly=True) as s:
            job = repo.get_job_any_tenant(s, job_id)
            s.expunge(job)
        return job

    def events(self, job_id: str) -> list[tuple[str | None, str, str | None]]:
        with session_scope(self.database_url, readonly=True) as s:
            return [(e.from_status, e.to_status, e.detail) for e in repo.job_events(s, job_id)]

    def metrics(self, job_id: str) -> dict[str, float]:
        with session_scope(self.database_url, readonly=True) as s:
            return repo.job_metrics(s, job_id)

    def candidates(self, job_id: str) -> list[Any]:
        with session_scope(self.database_url, readonly=True) as s:
            rows = repo.job_reference_rows(s, job_id)
            s.expunge_all()
        return rows

    def wait_terminal(self, job_ids: list[str], timeout: float = JOB_TIMEOUT_S) -> dict[str, Job]:
        def done() -> dict[str, Job] | None:
            jobs = {j: self.job(j) for j in job_ids}
            return (
                jobs
                if all(job.status in ("succeeded", "failed", "cancelled") for job in jobs.values())
                else None
            )

        try:
            return wait_for(done, timeout, f"jobs {job_ids} to finish", interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log (end) ---\n{self.log()[-3000:]}") from None

    def wait_running(self, job_id: str) -> Job:
        return wait_for(
            lambda: (job := self.job(job_id)).status == "running" and job,
            JOB_TIMEOUT_S,
            f"job {job_id} to start",
            interval=0.05,
        )

    def result_keys(self, tenant_id: str, job_id: str | None = None) -> list[str]:
        return self.store.list_keys(f"{tenant_id}/results/{job_id + '/' if job_id else ''}")


@pytest.fixture(scope="module")
def _cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin: PostgresAdmin, moto_server: MotoServer
) -> Iterator[Cluster]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    from celery import Celery

    from workers.app import TASK_ROUTES

    root = tmp_path_factory.mktemp("worker-integration")
    redis = RedisServer(root / "redis").start()  # private: other modules never see these queues
    bucket = S3Bucket(moto_server.endpoint_url, moto_server.create_bucket())
    processes = ProcessGroup(root / "logs")
    client = Celery("pikfix-test-client", broker=redis.url)
    client.conf.update(task_routes=TASK_ROUTES, task_serializer="json", accept_content=["json"])
    try:
        with postgres_admin.fresh_database() as url:
            upgrade(url)
            cluster = Cluster(
                redis, url, bucket, tiny_checkpoint(tmp_path_factory), processes, root / "data", client
            )
            cluster.store = bucket.store()
            cluster.start_worker()
            try:
                yield cluster
            finally:
                processes.close()
                dispose_engine(url)
    finally:
        client.close()
        redis.kill()
        with contextlib.suppress(Exception):  # never fail teardown over moto's housekeeping
            moto_server.delete_bucket(bucket.bucket)


@pytest.fixture
def cluster(_cluster: Cluster) -> Cluster:
    _cluster.ensure_worker()
    return _cluster


def _decoded_size(data: bytes) -> tuple[int, int]:
    import io

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def _assert_succeeded_once(
    cluster: Cluster, tenant_id: str, job: Job, size: tuple[int, int], attempts: int
) -> None:
    """The row, its one result object, metrics and the audit trail of a job that succeeded."""
    assert job.status == "succeeded" and job.error_code is None
    assert job.attempts == attempts
    assert job.output_key == result_key(tenant_id, job.id, ".png")
    assert (job.width, job.height) == size
    assert job.model_name == TINY_MODEL_NAME and job.checkpoint_sha256 == cluster.checkpoint.sha256
    assert job.device == "cpu" and job.worker and job.duration_s > 0
    assert cluster.result_keys(tenant_id, job.id) == [job.output_key]  # one object, however many runs
    assert _decoded_size(cluster.store.get_bytes(job.output_key)) == size
    assert set(cluster.metrics(job.id)) >= ALWAYS_RECORDED_METRICS
    events = cluster.events(job.id)
    assert [e[:2] for e in events].count(("running", "succeeded")) == 1
    assert events[-1] == ("running", "succeeded", f"attempt {attempts}")


# --------------------------------------------------------------------------- the happy path


def test_batch_is_restored_by_the_worker(cluster: Cluster) -> None:
    tenant = cluster.new_tenant()
    sizes = [(96, 64), (72, 120)]
    photos = [(f"scan{i}.jpg", photo_bytes(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    batch_id, ids = cluster.add_jobs(tenant, photos, {"reference_mode": "none", "output_format": "png"})
    cluster.dispatch()

    jobs = cluster.wait_terminal(ids)
    for job_id, size in zip(ids, sizes, strict=True):
        job = jobs[job_id]
        _assert_succeeded_once(cluster, tenant, job, size, attempts=1)
        assert job.sent_at is not None  # metered in by the dispatch task, not sent blindly
        assert [e[:2] for e in cluster.events(job_id)] == [
            (None, "queued"),
            ("queued", "running"),
            ("running", "succeeded"),
        ]
        # No reference wanted: the recorded fallback, not a silent gap in the provenance.
        (cand,) = cluster.candidates(job_id)
        assert cand.source == "fallback" and not cand.used and cand.reference_id is None
    assert sorted(k.split("/")[2] for k in cluster.result_keys(tenant)) == sorted(ids)

    cluster.send("pikfix.maintenance.finish_batches")
    html_key = report_key(tenant, batch_id)

    def recorded():  # the worker stores the report, then records its key: wait for the record
        with session_scope(cluster.database_url, readonly=True) as s:
            batch = repo.get_batch(s, tenant, batch_id)
            return batch if batch.report_key is not None else None

    batch = wait_for(recorded, 60, "the batch report")
    assert batch.status == "finished" and batch.report_key == html_key and cluster.store.exists(html_key)
    report = json.loads(cluster.store.get_bytes(html_key.rsplit(".", 1)[0] + ".json"))
    assert report["summary"]["counts"]["succeeded"] == 2 and report["summary"]["total"] == 2


def test_auto_mode_records_retrieval_candidates(cluster: Cluster) -> None:
    tenant = cluster.new_tenant()
    refs = {f"ref{i}.jpg": photo_bytes(80, 64, seed=(20, 21, 24)[i], colour=True) for i in range(3)}
    refs["scribble.jpg"] = NOT_AN_IMAGE
    ref_ids: dict[str, str] = {}
    for name, data in refs.items():
        key, sha, _ = put_content_addressed(cluster.store, tenant, data, ".jpg", kind="reference")
        with session_scope(cluster.database_url) as s:
            ref_ids[name] = repo.add_reference(s, tenant, name, key, sha).id
    for ref_id in ref_ids.values():
        cluster.send("pikfix.index_reference", ref_id)

    def indexed() -> dict[str, Any] | None:
        with session_scope(cluster.database_url, readonly=True) as s:
            rows = {
                r.name: (r.status, r.error, r.descriptor is not None) for r in repo.list_references(s, tenant)
            }
        return rows if all(status != "pending" for status, _, _ in rows.values()) else None

    status = wait_for(indexed, JOB_TIMEOUT_S, "references to be indexed", interval=0.25)
    assert {n: st[0] for n, st in status.items()} == {
        "ref0.jpg": "indexed",
        "ref1.jpg": "indexed",
        "ref2.jpg": "indexed",
        "scribble.jpg": "failed",
    }
    assert all(has_descriptor for name, (_, _, has_descriptor) in status.items() if name != "scribble.jpg")
    assert "not_an_image" in status["scribble.jpg"][1]

    _, ids = cluster.add_jobs(
        tenant,
        [("a.jpg", photo_bytes(96, 64, 1)), ("b.jpg", photo_bytes(64, 96, 2))],
        {"reference_mode": "auto"},
    )
    cluster.dispatch()
    jobs = cluster.wait_terminal(ids)
    good_refs = {ref_ids[n] for n in ("ref0.jpg", "ref1.jpg", "ref2.jpg")}
    for job_id in ids:
        job = jobs[job_id]
        assert job.status == "succeeded", (job.error_code, job.error_message)
        cands = cluster.candidates(job_id)
        assert [c.rank for c in cands] == [1, 2, 3]  # the whole indexed corpus; the failed photo is not in it
        assert {c.reference_id for c in cands} == good_refs
        assert [c.used for c in cands] == [True, False, False] and all(c.source == "retrieval" for c in cands)
        assert [c.total for c in cands] == sorted((c.total for c in cands), reverse=True)
        assert all(c.texture is not None and c.structure is not None for c in cands)
        assert job.reference_id == cands[0].reference_id
        assert cluster.metrics(job_id)["reference_score"] == pytest.approx(cands[0].total)


def test_ingest_archive_creates_jobs_and_records_skipped_members(cluster: Cluster) -> None:
    tenant = cluster.new_tenant()
    archive = zip_bytes(
        [
            ZipEntry("album/one.jpg", photo_bytes(96, 64, seed=3)),
            ZipEntry("album/two.png", photo_bytes(64, 80, seed=4, fmt="PNG")),
            ZipEntry("../evil.jpg", photo_bytes(32, 32, seed=5)),
            ZipEntry("album/link.jpg", b"/etc/passwd", symlink=True),
            ZipEntry("album/notes.txt", b"grandma's album, 1952"),
        ]
    )
    with session_scope(cluster.database_url) as s:
        batch_id = repo.create_batch(s, tenant, "uploaded album", {"reference_mode": "none"}).id
    key = upload_key(tenant, batch_id, "album.zip")
    cluster.store.put_bytes(key, archive, content_type="application/zip")
    with session_scope(cluster.database_url) as s:
        archive_id = repo.add_archive(s, tenant, batch_id, "album.zip", key, len(archive)).id
    cluster.send("pikfix.ingest_archive", archive_id)

    def ingested() -> list[Job] | None:
        with session_scope(cluster.database_url, readonly=True) as s:
            archive_row = repo.get_archive_any_tenant(s, archive_id)
            jobs = list(repo.iter_batch_jobs(s, batch_id))
            s.expunge_all()
        return jobs if archive_row.status == "ingested" and len(jobs) == 5 else None

    jobs = {j.input_name: j for j in wait_for(ingested, JOB_TIMEOUT_S, "the archive to be ingested", 0.25)}
    assert set(jobs) == {"album/one.jpg", "album/two.png", "../evil.jpg", "album/link.jpg", "album/notes.txt"}
    skipped = {
        "../evil.jpg": "path traversal",
        "album/link.jpg": "symbolic link",
        "album/notes.txt": "not an image file name",
    }
    for name, reason in skipped.items():
        job = jobs[name]
        assert job.status == "failed" and job.error_code == "skipped_member" and reason in job.error_message
        assert job.output_key is None

    done = cluster.wait_terminal([jobs["album/one.jpg"].id, jobs["album/two.png"].id])
    for name, size in (("album/one.jpg", (96, 64)), ("album/two.png", (64, 80))):
        _assert_succeeded_once(cluster, tenant, done[jobs[name].id], size, attempts=1)
    # Only the two photos were stored as originals; the refused members never reached storage.
    assert len(cluster.store.list_keys(f"{tenant}/originals/")) == 2

    with session_scope(cluster.database_url) as s:
        assert (archive_row := repo.get_archive_any_tenant(s, archive_id)).created_jobs == 2
        assert archive_row.refused_members == 3
        assert repo.get_batch(s, tenant, batch_id).status == "open"  # only the client submits
        repo.submit_batch(s, tenant, batch_id)
    cluster.send("pikfix.maintenance.finish_batches")
    html_key = report_key(tenant, batch_id)
    wait_for(lambda: cluster.store.exists(html_key), 60, "the batch report")
    with session_scope(cluster.database_url, readonly=True) as s:
        batch = repo.get_batch(s, tenant, batch_id)
        assert batch.status == "finished" and batch.total_jobs == 5
    summary = json.loads(cluster.store.get_bytes(html_key.rsplit(".", 1)[0] + ".json"))["summary"]
    assert summary["counts"]["succeeded"] == 2 and summary["counts"]["failed"] == 3
    assert summary["error_codes"] == {"skipped_member": 3}


# --------------------------------------------------------------------------- bad input, duplicates


def test_poison_inputs_fail_and_the_worker_goes_on(cluster: Cluster) -> None:
    tenant = cluster.new_tenant()
    main_pid, child = cluster.worker.pid, cluster.pool_child()
    photos = [
        ("letter.jpg", NOT_AN_IMAGE),
        ("broken.jpg", truncated_jpeg()),
        ("good.jpg", photo_bytes(80, 60, 9)),
    ]
    _, ids = cluster.add_jobs(tenant, photos, {"reference_mode": "none"})
    cluster.dispatch()
    jobs = cluster.wait_terminal(ids)
    letter, broken, good = (jobs[i] for i in ids)
    assert (letter.status, letter.error_code) == ("failed", "not_an_image")
    assert (broken.status, broken.error_code) == ("failed", "truncated_image")
    for bad in (letter, broken):
        assert bad.attempts == 1 and bad.output_key is None and bad.error_message
        assert cluster.events(bad.id)[-1] == ("running", "failed", bad.error_code)
        assert cluster.metrics(bad.id) == {}
    _assert_succeeded_once(cluster, tenant, good, (80, 60), attempts=1)
    # Bad input is a verdict on the job, not a crash: the same pool process handled all three.
    assert cluster.worker.alive() and cluster.worker.pid == main_pid
    assert child_pids(main_pid) == [child]


def test_duplicate_delivery_records_one_success(cluster: Cluster) -> None:
    tenant = cluster.new_tenant()
    _, (job_id,) = cluster.add_jobs(
        tenant, [("twice.jpg", photo_bytes(96, 72, 11))], {"reference_mode": "none"}, batch=False
    )
    with session_scope(cluster.database_url) as s:
        repo.mark_sent(s, [job_id])  # as dispatch would, so metering never sends it a third time
    cluster.send("pikfix.restore_job", job_id)
    cluster.send("pikfix.restore_job", job_id)

    (job,) = cluster.wait_terminal([job_id]).values()
    wait_for(lambda: f"job {job_id} skipped" in cluster.log(), 60, "the second delivery to be handled")
    _assert_succeeded_once(cluster, tenant, job, (96, 72), attempts=1)
    assert [e[:2] for e in cluster.events(job_id)] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert f"job {job_id} skipped already_terminal" in cluster.log()
    assert len(cluster.candidates(job_id)) == 1


# --------------------------------------------------------------------------- retries, declared on the tasks


def test_retry_policies_are_declared_on_the_tasks() -> None:
    """Celery computes every countdown (no hand-written backoff); the restore job stops itself within
    the job's attempt budget, so it is not jittered (each retry's claim spends an attempt)."""
    from workers.pipeline import TRANSIENT_ERRORS, TransientError
    from workers.tasks import index_reference, ingest_archive, restore_job
    from workers.webhooks import NotDelivered, call_batch_webhook

    def policy(task) -> tuple:
        return (tuple(task.autoretry_for), task.max_retries, task.retry_backoff, task.retry_backoff_max,
                task.retry_jitter)

    assert policy(restore_job) == ((TransientError,), 6, 2, 300, False)
    assert policy(index_reference) == policy(ingest_archive) == (TRANSIENT_ERRORS, 6, 2, 300, True)
    assert policy(call_batch_webhook)[1:] == (2, True, 5, True)
    assert NotDelivered in call_batch_webhook.autoretry_for


def test_a_webhook_failing_twice_is_retried_by_the_worker_and_delivered_once(cluster: Cluster) -> None:
    received: list[tuple[bytes, str]] = []
    statuses = [503, 500]

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers[SIGNATURE_HEADER]))
            self.send_response(statuses.pop(0) if statuses else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tenant = cluster.new_tenant()
    try:
        with session_scope(cluster.database_url) as s:
            url = f"http://127.0.0.1:{server.server_address[1]}/hook"
            batch_id = repo.create_batch(s, tenant, "album", None, webhook_url=url).id
            job_id = repo.create_job(s, tenant, batch_id, f"{tenant}/originals/a.jpg", None, "a.jpg", 10).id
            repo.submit_batch(s, tenant, batch_id)
            assert repo.fail_job(s, job_id, None, "not_an_image", "a text file")
        cluster.send("pikfix.maintenance.finish_batches")
        wait_for(lambda: len(received) >= 3, 60, "three webhook attempts")
        time.sleep(3)  # longer than any countdown the policy allows: a fourth attempt would be here
    finally:
        server.shutdown()
        server.server_close()
    (body, signature), *_ = received
    assert received == [(body, signature)] * 3 and signature == sign(body, WEBHOOK_SECRET)
    assert json.loads(body)["batch_id"] == batch_id
    log = cluster.log()
    assert f"webhook for batch {batch_id} attempt 2: HTTP 500" in log
    # The two retries are Celery's, through the broker, with the countdowns it drew: at most 1 s, then 2 s.
    first, second = map(int, re.findall(r"pikfix\.batch_webhook\[[-\w]+\] retry: Retry in (\d+)s", log))
    assert first <= 1 and second <= 2


# --------------------------------------------------------------------------- crashes


def _long_job(cluster: Cluster, tenant: str) -> str:
    data = photo_bytes(LONG_PHOTO_SIDE, LONG_PHOTO_SIDE, seed=13)
    _, (job_id,) = cluster.add_jobs(tenant, [("large-scan.jpg", data)], {"reference_mode": "none"})
    cluster.dispatch()
    running = cluster.wait_running(job_id)
    assert running.attempts == 1
    return job_id


def test_sigkill_of_the_pool_process_redelivers_the_job(cluster: Cluster) -> None:
    tenant = cluster.new_tenant()
    main_pid = cluster.worker.pid
    job_id = _long_job(cluster, tenant)
    child = cluster.pool_child()
    os.kill(child, signal.SIGKILL)  # the OOM killer's way: no cleanup, no ack

    (job,) = cluster.wait_terminal([job_id]).values()
    # acks_late + reject_on_worker_lost: the message went back to the queue and a new pool process ran it.
    _assert_succeeded_once(cluster, tenant, job, (LONG_PHOTO_SIDE, LONG_PHOTO_SIDE), attempts=2)
    assert [e[:2] for e in cluster.events(job_id)] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "running"),
        ("running", "succeeded"),
    ]
    assert cluster.worker.alive() and cluster.worker.pid == main_pid
    assert not pid_alive(child) and cluster.pool_child() != child
    assert "WorkerLostError" in cluster.log()


def test_sigkill_of_the_whole_worker_is_recovered_by_the_stuck_job_sweep(cluster: Cluster) -> None:
    tenant = cluster.new_tenant()
    job_id = _long_job(cluster, tenant)
    cluster.worker.kill()  # SIGKILL to the worker and its pool: the broker keeps the message unacked

    job = cluster.job(job_id)
    assert (job.status, job.attempts) == ("running", 1)
    cluster.start_worker()
    # The unacked message comes back only after the visibility timeout (above the hard time limit,
    # i.e. the better part of an hour); the database is what notices. Let that much time pass for this
    # job by moving its clock back, then run the sweep exactly as beat would.
    earlier = timedelta(hours=3)
    with session_scope(cluster.database_url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(sent_at=job.sent_at - earlier, started_at=job.started_at - earlier)
        )
    assert cluster.job(job_id).attempts == 1  # nothing picked it up on its own meanwhile
    cluster.send("pikfix.maintenance.resend_stuck_jobs")

    (job,) = cluster.wait_terminal([job_id]).values()
    _assert_succeeded_once(cluster, tenant, job, (LONG_PHOTO_SIDE, LONG_PHOTO_SIDE), attempts=2)
    assert [e[:2] for e in cluster.events(job_id)][-2:] == [("running", "running"), ("running", "succeeded")]
    assert "re-sent 1 stuck jobs" in cluster.log()
