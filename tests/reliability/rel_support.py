"""Shared parts of the reliability suite: a cluster of real services and worker processes, and the
figures every fault test asserts.

A :class:`RelCluster` is a private redis-server (AOF on), a PostgreSQL database, a moto S3 bucket and
the ``pikfix worker`` / ``pikfix beat`` processes started against them, with the small Celery client the
tests use to send tasks *by name* (playing the API and beat). Workers may be pointed at a
:class:`~fault_proxy.FaultProxy` instead of the S3 endpoint; the test process itself always talks to
the real endpoint, so a fault injected for the workers never hides what was really stored.

:func:`batch_figures` reads back what a batch left behind (rows, events, metric rows, result objects)
and counts every way a fault could have corrupted it: jobs not finished, succeeded twice, succeeded
without a result, failed with a result, duplicate rows. Each test asserts those counts and records
them with :func:`record_figures` (``PIKFIX_RELIABILITY_FIGURES=path.jsonl`` collects them in a file).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS / "workers") not in sys.path:  # the job-system helpers (tiny checkpoint, photos, polling)
    sys.path.insert(0, str(_TESTS / "workers"))

from helpers import (  # noqa: E402
    REPO_ROOT,
    WORKING_SIZE,
    TinyCheckpoint,
    child_pids,
    photo_bytes,
    pid_alive,
    tiny_checkpoint,
    wait_for,
)

try:  # tests/ is on sys.path (no packages); see tests/conftest.py
    from fixtures.moto_service import MotoServer, S3Bucket
    from fixtures.processes import ManagedProcess, ProcessGroup
    from fixtures.redis_service import RedisServer, redis_server_binary
except ModuleNotFoundError:  # pragma: no cover - tests/ imported as a package
    from tests.fixtures.moto_service import MotoServer, S3Bucket
    from tests.fixtures.processes import ManagedProcess, ProcessGroup
    from tests.fixtures.redis_service import RedisServer, redis_server_binary

from db import repository as repo  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Job, JobEvent, JobReference, QualityMetric  # noqa: E402
from db.session import dispose_engine, session_scope  # noqa: E402
from storage import put_content_addressed  # noqa: E402

QUEUES = "restore,ingest,maintenance"
TERMINAL = ("succeeded", "failed", "cancelled")
FIGURES_ENV = "PIKFIX_RELIABILITY_FIGURES"

__all__ = [
    "QUEUES",
    "RedisServer",
    "REPO_ROOT",
    "WORKING_SIZE",
    "BatchFigures",
    "RelCluster",
    "TinyCheckpoint",
    "batch_figures",
    "child_pids",
    "cli_command",
    "make_cluster",
    "make_celery_client",
    "message_job_id",
    "photo_bytes",
    "pid_alive",
    "poll_until",
    "record_figures",
    "small_photos",
    "tiny_checkpoint",
    "wait_for",
]


def cli_command() -> list[str]:
    """``pikfix`` from this interpreter's environment (the console script, or the module as fallback)."""
    script = Path(sys.executable).with_name("pikfix")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]


def small_photos(count: int, side: int = 48, distinct: int = 8, prefix: str = "scan") -> list[tuple[str, bytes]]:
    """``count`` photos for a batch; ``distinct`` different images (content-addressed: stored once each)."""
    pool = [photo_bytes(side, side - 8 * (i % 2), seed=i) for i in range(distinct)]
    return [(f"{prefix}{i:04d}.jpg", pool[i % distinct]) for i in range(count)]


def photo_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# --------------------------------------------------------------------------- the cluster


@dataclass
class RelCluster:
    """Real broker, database and bucket, the worker processes started on them, and a task client."""

    redis: RedisServer
    database_url: str
    bucket: S3Bucket
    checkpoint: TinyCheckpoint
    processes: ProcessGroup
    data_dir: Path
    client: Any
    store: Any = field(repr=False)
    worker_s3_endpoint: str | None = None  # a FaultProxy's URL, else the bucket's own endpoint
    worker_database_url: str | None = None  # a proxy in front of the database, else database_url
    base_env: dict[str, str] = field(default_factory=dict)
    proxy: Any = None  # the FaultProxy a test put in front of S3, if any
    beat: ManagedProcess | None = None
    api_url: str | None = None  # a ``pikfix api`` a test started
    db_proxy: Any = None  # a FaultProxy in front of the database, if any
    workers: list[ManagedProcess] = field(default_factory=list)

    # -- processes

    def worker_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            **self.bucket.env,
            "PIKFIX_BROKER_URL": self.redis.url,
            "PIKFIX_DATABASE_URL": self.worker_database_url or self.database_url,
            "PIKFIX_CHECKPOINT": str(self.checkpoint.path),
            "PIKFIX_WORKING_SIZE": str(WORKING_SIZE),
            "PIKFIX_DEVICE": "cpu",
            "PIKFIX_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
            **self.base_env,
        }
        if self.worker_s3_endpoint:
            env["PIKFIX_S3_ENDPOINT_URL"] = self.worker_s3_endpoint
        env.update(extra or {})
        return env

    def start_worker(
        self,
        concurrency: int = 1,
        extra_env: dict[str, str] | None = None,
        queues: str = QUEUES,
        timeout: float = 180.0,
    ) -> ManagedProcess:
        """``pikfix worker`` (prefork); returns once it said ready and its pool processes exist."""
        name = f"w{uuid.uuid4().hex[:6]}@pikfix-rel"
        cmd = [*cli_command(), "worker", "--queues", queues, "--concurrency", str(concurrency), "--hostname", name]
        ready_line = f"{name} ready."
        worker = self.processes.start(
            cmd,
            env=self.worker_env(extra_env),
            ready=lambda proc: ready_line in proc.log_text() and len(child_pids(proc.pid)) >= concurrency,
            cwd=REPO_ROOT,
            timeout=timeout,
            name=f"worker-{name.split('@')[0]}",
        )
        self.workers.append(worker)
        return worker

    def start_beat(self, extra_env: dict[str, str] | None = None) -> ManagedProcess:
        """``pikfix beat``: the maintenance schedule, at ``PIKFIX_MAINTENANCE_INTERVAL_S``."""
        schedule = self.data_dir / f"beat-{uuid.uuid4().hex[:6]}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.processes.start(
            [*cli_command(), "beat", "--loglevel", "INFO", "--schedule-file", str(schedule)],
            env=self.worker_env(extra_env),
            ready=lambda proc: "beat: Starting" in proc.log_text(),
            cwd=REPO_ROOT,
            timeout=120,
            name="beat",
        )

    def start_api(self, extra_env: dict[str, str] | None = None) -> str:
        """``pikfix api`` (one uvicorn worker) on a free port; returns and remembers its base URL."""
        import httpx
        from fixtures.processes import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        self.processes.start([*cli_command(), "api", "--workers", "1", "--port", str(port)],
                             env=self.worker_env(extra_env), ready=answers, cwd=REPO_ROOT, timeout=120, name="api")
        self.api_url = url
        return url

    def api_key(self, tenant_id: str) -> dict[str, str]:
        """Authorization headers with a fresh API key of the tenant."""
        with session_scope(self.database_url) as s:
            plaintext, _ = repo.create_api_key(s, tenant_id)
        return {"Authorization": f"Bearer {plaintext}"}

    def logs(self) -> str:
        return "\n".join(w.log_text() for w in self.workers)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log_text(tail=chars)}" for w in self.workers[-2:])

    # -- tasks and rows

    def send(self, task: str, *args: Any) -> None:
        self.client.send_task(task, args=list(args))

    def dispatch(self) -> None:
        self.send("pikfix.maintenance.dispatch_queued_jobs")

    def new_tenant(self) -> str:
        with session_scope(self.database_url) as s:
            return repo.create_tenant(s, f"bureau-{uuid.uuid4().hex[:8]}").id

    def add_jobs(
        self, tenant_id: str, photos: list[tuple[str, bytes]], options: dict | None = None
    ) -> tuple[str, list[str]]:
        """Originals into S3 (directly, never through a proxy), then a batch of queued jobs committed."""
        options = options or {"reference_mode": "none", "output_format": "png"}
        stored: dict[bytes, tuple[str, str]] = {}
        rows = []
        for name, data in photos:
            if data not in stored:
                key, sha, _ = put_content_addressed(self.store, tenant_id, data, Path(name).suffix or ".bin")
                stored[data] = (key, sha)
            rows.append((name, data, *stored[data]))
        with session_scope(self.database_url) as s:
            batch_id = repo.create_batch(s, tenant_id, "reliability", options).id
            ids = [repo.create_job(s, tenant_id, batch_id, key, sha, name, len(data)).id for name, data, key, sha in rows]
            repo.submit_batch(s, tenant_id, batch_id)
        return batch_id, ids

    def jobs(self, tenant_id: str) -> list[Job]:
        with session_scope(self.database_url, readonly=True) as s:
            rows = list(s.scalars(select(Job).where(Job.tenant_id == tenant_id)))
            s.expunge_all()
        return rows

    def job(self, job_id: str) -> Job:
        with session_scope(self.database_url, readonly=True) as s:
            job = repo.get_job_any_tenant(s, job_id)
            s.expunge(job)
        return job

    def status_counts(self, tenant_id: str) -> Counter[str]:
        with session_scope(self.database_url, readonly=True) as s:
            rows = s.execute(
                select(Job.status, func.count()).where(Job.tenant_id == tenant_id).group_by(Job.status)
            ).all()
        return Counter(dict(rows))

    def finished(self, tenant_id: str) -> int:
        counts = self.status_counts(tenant_id)
        return sum(counts[s] for s in TERMINAL)

    def wait_finished(self, tenant_id: str, total: int, timeout: float, at_least: int | None = None) -> Counter[str]:
        """Wait until ``at_least`` (default all ``total``) jobs are terminal; fail with the workers' logs."""
        goal = total if at_least is None else at_least

        def probe() -> Counter[str] | None:
            counts = self.status_counts(tenant_id)
            return counts if sum(counts[s] for s in TERMINAL) >= goal else None

        try:
            return wait_for(probe, timeout, f"{goal} of {total} jobs to finish", interval=0.25)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstatus now: {dict(self.status_counts(tenant_id))}\n{self.log_tail()}"
            ) from None

    def move_clock_back(self, job_ids: list[str], by: timedelta = timedelta(hours=3)) -> None:
        """Let ``by`` pass for these jobs only: the stuck-job sweep then sees them as overdue."""
        with session_scope(self.database_url) as s:
            for job in s.scalars(select(Job).where(Job.id.in_(list(job_ids)))):
                job.sent_at = job.sent_at - by if job.sent_at else None
                job.started_at = job.started_at - by if job.started_at else None

    def active_job_ids(self, tenant_id: str) -> list[str]:
        with session_scope(self.database_url, readonly=True) as s:
            return list(
                s.scalars(select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(("queued", "running"))))
            )

    # -- the broker's view

    def queued_task_job_ids(self, queue: str = "restore") -> list[str]:
        """Job ids of the restore messages waiting in a queue list (not yet delivered)."""
        with self.redis.client() as r:
            raw = r.lrange(queue, 0, -1)
        return [job for job in (message_job_id(json.loads(m)) for m in raw) if job]

    def unacked_task_job_ids(self) -> list[str]:
        """Job ids of messages delivered to a consumer and not acknowledged (kombu's ``unacked`` hash)."""
        with self.redis.client() as r:
            raw = r.hvals("unacked")
        return [job for job in (message_job_id(json.loads(m)[0]) for m in raw) if job]


def message_job_id(message: dict[str, Any]) -> str | None:
    """The job id a kombu/Celery message carries (protocol 2: body is ``[args, kwargs, embed]``)."""
    if message.get("headers", {}).get("task") != "pikfix.restore_job":
        return None
    body = message.get("body", "")
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return args[0] if args else None


def make_celery_client(broker_url: str):
    from celery import Celery

    from workers.app import TASK_ROUTES

    client = Celery("pikfix-reliability-client", broker=broker_url)
    client.conf.update(
        task_routes=TASK_ROUTES,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
    )
    return client


@contextlib.contextmanager
def make_cluster(
    *,
    root: Path,
    redis: RedisServer,
    database_url: str,
    moto_server: MotoServer,
    checkpoint: TinyCheckpoint,
    base_env: dict[str, str] | None = None,
) -> Iterator[RelCluster]:
    """Migrate the database, make a bucket and a process group; stop everything on exit."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    upgrade(database_url)
    bucket = S3Bucket(moto_server.endpoint_url, moto_server.create_bucket())
    processes = ProcessGroup(root / "logs")
    client = make_celery_client(redis.url)
    cluster = RelCluster(
        redis=redis,
        database_url=database_url,
        bucket=bucket,
        checkpoint=checkpoint,
        processes=processes,
        data_dir=root / "data",
        client=client,
        store=bucket.store(),
        base_env=dict(base_env or {}),
    )
    try:
        yield cluster
    finally:
        processes.close()
        client.close()
        dispose_engine(database_url)
        with contextlib.suppress(Exception):  # never fail teardown over moto's housekeeping
            moto_server.delete_bucket(bucket.bucket)


# --------------------------------------------------------------------------- figures


@dataclass
class BatchFigures:
    """What a batch left behind, counted every way a fault could have corrupted it."""

    total: int
    by_status: dict[str, int]
    error_codes: dict[str, int]
    result_objects: int
    succeeded_without_result: int  # succeeded, but its output object is missing or unreadable
    failed_with_result: int  # failed or still active, yet an output key or object exists
    jobs_succeeded_twice: int  # more than one running->succeeded event
    duplicate_metric_rows: int
    duplicate_reference_rows: int
    failed_with_metrics: int  # a failed job must not have half its results recorded
    max_attempts: int
    retried_jobs: int  # attempts > 1
    attempts_histogram: dict[int, int]

    @property
    def succeeded(self) -> int:
        return self.by_status.get("succeeded", 0)

    @property
    def failed(self) -> int:
        return self.by_status.get("failed", 0)

    @property
    def unfinished(self) -> int:
        return sum(v for k, v in self.by_status.items() if k not in TERMINAL)

    def corrupt(self) -> int:
        """Sum of the counts that must always be zero, whatever the fault."""
        return (
            self.succeeded_without_result
            + self.failed_with_result
            + self.jobs_succeeded_twice
            + self.duplicate_metric_rows
            + self.duplicate_reference_rows
            + self.failed_with_metrics
        )


def batch_figures(cluster: RelCluster, tenant_id: str, decode_results: bool = True) -> BatchFigures:
    """Count the tenant's jobs, events, metric rows and result objects (reading the real bucket)."""
    url = cluster.database_url
    with session_scope(url, readonly=True) as s:
        jobs = list(s.scalars(select(Job).where(Job.tenant_id == tenant_id)))
        s.expunge_all()
        ids = [j.id for j in jobs]
        successes = Counter(
            s.scalars(
                select(JobEvent.job_id).where(
                    JobEvent.job_id.in_(ids), JobEvent.from_status == "running", JobEvent.to_status == "succeeded"
                )
            )
        )
        dup_metrics = s.execute(
            select(func.count()).select_from(
                select(QualityMetric.job_id, QualityMetric.name)
                .where(QualityMetric.job_id.in_(ids))
                .group_by(QualityMetric.job_id, QualityMetric.name)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar_one()
        dup_refs = s.execute(
            select(func.count()).select_from(
                select(JobReference.job_id, JobReference.rank)
                .where(JobReference.job_id.in_(ids))
                .group_by(JobReference.job_id, JobReference.rank)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar_one()
        with_metrics = set(s.scalars(select(QualityMetric.job_id).where(QualityMetric.job_id.in_(ids)).distinct()))
    objects = cluster.store.list_keys(f"{tenant_id}/results/")
    object_jobs = Counter(key.split("/")[2] for key in objects)
    succeeded_without = 0
    failed_with = 0
    for job in jobs:
        if job.status == "succeeded":
            ok = job.output_key is not None and object_jobs.get(job.id) == 1 and job.output_key in objects
            if ok and decode_results:
                try:
                    ok = photo_size(cluster.store.get_bytes(job.output_key)) == (job.width, job.height)
                except Exception:
                    ok = False
            succeeded_without += not ok
        elif job.output_key is not None or (job.status == "failed" and job.id in object_jobs):
            failed_with += 1
    attempts = Counter(j.attempts for j in jobs)
    return BatchFigures(
        total=len(jobs),
        by_status=dict(Counter(j.status for j in jobs)),
        error_codes=dict(Counter(j.error_code for j in jobs if j.error_code)),
        result_objects=len(objects),
        succeeded_without_result=succeeded_without,
        failed_with_result=failed_with,
        jobs_succeeded_twice=sum(1 for n in successes.values() if n > 1),
        duplicate_metric_rows=int(dup_metrics),
        duplicate_reference_rows=int(dup_refs),
        failed_with_metrics=sum(1 for j in jobs if j.status == "failed" and j.id in with_metrics),
        max_attempts=max(attempts, default=0),
        retried_jobs=sum(n for a, n in attempts.items() if a > 1),
        attempts_histogram=dict(sorted(attempts.items())),
    )


def record_figures(test: str, **figures: Any) -> dict[str, Any]:
    """Print the measured figures (shown with ``-s`` or on failure) and append them to the JSONL file
    named by ``PIKFIX_RELIABILITY_FIGURES``, if set, for docs/reliability.md."""
    row = {"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **_plain(figures)}
    print(f"[reliability] {json.dumps(row, sort_keys=True)}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row, sort_keys=True) + "\n")
    return row


def _plain(value: Any) -> Any:
    if isinstance(value, BatchFigures):
        return {**asdict(value), "succeeded": value.succeeded, "failed": value.failed}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


def poll_until(probe: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Like ``wait_for`` but returns the last value instead of failing (for optional waits)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
