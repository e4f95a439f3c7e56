"""What Flower shows is what the database holds: a restore job that ends ``failed`` is a failed task,
with the job's error code first in its exception, and a task whose worker was SIGKILLed ends failed
(``worker_lost``) once a worker of the same name starts again, instead of showing STARTED forever.

Real parts only: ``pikfix flower`` (read through its HTTP API, behind basic auth), ``pikfix worker``
processes, a private redis-server, a fresh PostgreSQL database and a moto bucket. The test sends
restore tasks by name with task ids of its own, as dispatch would send them.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures.processes import free_port, port_open
from helpers import (
    NOT_AN_IMAGE,
    REPO_ROOT,
    WORKING_SIZE,
    child_pids,
    photo_bytes,
    tiny_checkpoint,
    truncated_jpeg,
    wait_for,
)
from sqlalchemy import select

from db import repository as repo
from db.migrate import upgrade
from db.models import Job
from db.session import dispose_engine, session_scope
from storage import put_content_addressed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CLI_ARGS = ["-c", "import sys; from service.cli import main; sys.exit(main())"]
AUTH = ("ops", "s3cret")
TIMEOUT_S = 180.0


@dataclass
class Stack:
    env: dict[str, str]
    database_url: str
    store: Any
    client: Any
    processes: Any
    flower_url: str = ""

    def start_flower(self) -> None:
        port = free_port()
        self.processes.start_process([sys.executable, *CLI_ARGS, "flower", "--port", str(port)], env=self.env,
                                     cwd=REPO_ROOT, ready=lambda: port_open(port), timeout=60, name="flower")
        self.flower_url = f"http://127.0.0.1:{port}"

    def start_worker(self, name: str):
        return self.processes.start_process(
            [sys.executable, *CLI_ARGS, "worker", "--queues", "restore", "--concurrency", "1", "--hostname", name],
            env=self.env, cwd=REPO_ROOT, timeout=180, name=f"worker-{name.split('@')[0]}",
            ready=lambda proc: f"{name} ready." in proc.log_text() and bool(child_pids(proc.pid)),
        )

    def flower_knows_worker(self, name: str) -> bool:
        r = httpx.get(f"{self.flower_url}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=30)
        return r.status_code == 200 and name in r.json()

    def add_jobs(self, photos: list[tuple[str, bytes]]) -> list[str]:
        with session_scope(self.database_url) as s:
            tenant = repo.create_tenant(s, f"bureau-{uuid.uuid4().hex[:8]}").id
        stored = [(name, data, put_content_addressed(self.store, tenant, data, ".jpg")) for name, data in photos]
        with session_scope(self.database_url) as s:
            ids = [repo.create_job(s, tenant, None, key, sha, name, len(data), {"reference_mode": "none"}).id
                   for name, data, (key, sha, _) in stored]
            repo.mark_sent(s, ids)  # as dispatch does before the broker has it, so nothing sends them twice
        return ids

    def send(self, job_id: str) -> str:
        task_id = str(uuid.uuid4())
        self.client.send_task("pikfix.restore_job", args=[job_id], task_id=task_id)
        return task_id

    def job(self, job_id: str) -> Job:
        with session_scope(self.database_url, readonly=True) as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            s.expunge(job)
        return job

    def task(self, task_id: str) -> dict[str, Any] | None:
        r = httpx.get(f"{self.flower_url}/api/task/info/{task_id}", auth=AUTH, timeout=30)
        return r.json() if r.status_code == 200 else None

    def task_in_state(self, task_id: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        try:
            return wait_for(lambda: (t := self.task(task_id)) and t["state"] == state and t, timeout,
                            f"Flower to show task {task_id} {state}", interval=0.5)
        except AssertionError as exc:
            shown = self.task(task_id) or {}
            raise AssertionError(f"{exc}; Flower shows {shown.get('state')}: {shown}") from None


@pytest.fixture
def stack(tmp_path: Path, tmp_path_factory, fresh_redis_server, postgres_url, s3_bucket, process_group):
    from celery import Celery

    from workers.app import TASK_ROUTES

    upgrade(postgres_url)
    checkpoint = tiny_checkpoint(tmp_path_factory)
    env = {
        **s3_bucket.env,
        "PIKFIX_BROKER_URL": fresh_redis_server.url,
        "PIKFIX_DATABASE_URL": postgres_url,
        "PIKFIX_CHECKPOINT": str(checkpoint.path),
        "PIKFIX_WORKING_SIZE": str(WORKING_SIZE),
        "PIKFIX_DEVICE": "cpu",
        "PIKFIX_DATA_DIR": str(tmp_path / "data"),
        "PIKFIX_FLOWER_BASIC_AUTH": ":".join(AUTH),
        "PYTHONUNBUFFERED": "1",
    }
    client = Celery("pikfix-flower-test-client", broker=fresh_redis_server.url)
    client.conf.update(task_routes=TASK_ROUTES, task_serializer="json", accept_content=["json"])
    try:
        yield Stack(env, postgres_url, s3_bucket.store(), client, process_group)
    finally:
        process_group.close()
        client.close()
        dispose_engine(postgres_url)


def test_a_failed_job_is_a_failed_task_with_its_error_code_never_retried(stack: Stack) -> None:
    stack.start_flower()
    worker = stack.start_worker("failures@flower-test")
    wait_for(lambda: stack.flower_knows_worker("failures@flower-test"), 60, "Flower to see the worker", 1.0)
    main_pid, pool = worker.pid, child_pids(worker.pid)
    letter, broken, good = stack.add_jobs(
        [("letter.jpg", NOT_AN_IMAGE), ("broken.jpg", truncated_jpeg()), ("good.jpg", photo_bytes(80, 60, 9))]
    )
    tasks = {job_id: stack.send(job_id) for job_id in (letter, broken, good)}  # in this order, one at a time

    for job_id, code in ((letter, "not_an_image"), (broken, "truncated_image")):
        shown = stack.task_in_state(tasks[job_id], "FAILURE", TIMEOUT_S)
        job = stack.job(job_id)
        assert (job.status, job.error_code, job.attempts) == ("failed", code, 1)
        assert shown["exception"].startswith(f"JobFailed('{code}: "), shown["exception"]
        assert job.error_message in shown["exception"]
        assert not shown["retries"]
    shown = stack.task_in_state(tasks[good], "SUCCESS", TIMEOUT_S)
    assert stack.job(good).status == "succeeded" and shown["result"] == "'succeeded'"

    # Not retried, and the worker went on: one task per job, the same processes throughout.
    listed = httpx.get(f"{stack.flower_url}/api/tasks", auth=AUTH, timeout=30).json()
    assert sorted(listed) == sorted(tasks.values())
    assert worker.alive() and worker.pid == main_pid and child_pids(main_pid) == pool
    log = worker.log_text()
    assert "Retry in" not in log and "raised unexpected" not in log  # an expected failure, no traceback


def test_a_killed_task_is_failed_once_its_worker_starts_again_under_the_same_name(stack: Stack) -> None:
    name = "killed@flower-test"
    stack.start_flower()
    worker = stack.start_worker(name)
    wait_for(lambda: stack.flower_knows_worker(name), 60, "Flower to see the worker", 1.0)
    (job_id,) = stack.add_jobs([("large-scan.jpg", photo_bytes(1024, 1024, seed=13))])
    task_id = stack.send(job_id)
    wait_for(lambda: stack.job(job_id).status == "running", TIMEOUT_S, "the job to start", 0.05)
    stack.task_in_state(task_id, "STARTED")
    worker.kill()  # SIGKILL to the worker and its pool: it sends no event about the task it held

    stack.start_worker(name)  # the same name, as a restarted container or pod gets
    shown = stack.task_in_state(task_id, "FAILURE")
    assert "worker_lost" in shown["exception"] and name in shown["exception"], shown
    assert shown["name"] == "pikfix.restore_job"
