"""Celery tasks: small, idempotent, taking ids, never objects (docs/operations.md, "6. Failure modes").

A restore job that ends ``failed`` ends its task as a failure too (:class:`JobFailed`, error code first),
so Flower's failed count is the database's. Each task a worker starts is noted in the broker under the
worker's name until it ends; a worker that starts under a name whose notes outlived their process
reports those tasks failed (``worker_lost``), so Flower does not show a killed task as started forever.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from reprlib import repr as short_repr

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun, worker_process_init, worker_ready
from kombu.exceptions import OperationalError as KombuOperationalError

from db import repository as repo
from db.models import TOO_MANY_ATTEMPTS
from db.session import session_scope
from storage import ObjectNotFound, StorageError, put_content_addressed
from workers.app import app
from workers.archive import ArchiveError, Member, iter_images
from workers.dispatch import dispatch_tenant
from workers.pipeline import TRANSIENT_ERRORS, TransientError, fail_after_retries, run_restore_job
from workers.references import colour_problem
from workers.runtime import get_runtime

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 6
# Celery's declared retry policy for storage/database outages: 2, 4, 8 ... s, capped well below the
# broker's visibility timeout.
TRANSIENT_RETRY = dict(max_retries=MAX_TRANSIENT_RETRIES, retry_backoff=2, retry_backoff_max=300)


class JobFailed(Exception):
    """The restore job ended ``failed``; raised once its row says so, so the task is a failure in
    Flower, with the error code first in the message. Never retried: the task retries only
    ``TransientError``, and a failed task's message is acknowledged."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message

    def __reduce__(self):  # pickled from the pool process to the worker with the code kept apart
        return type(self), (self.code, self.message)


@worker_process_init.connect
def _load_model_in_child(**_: object) -> None:
    """Load the model in each prefork child, never in the parent (CUDA must not be forked)."""
    from db.session import dispose_engines

    dispose_engines()  # never reuse the parent's database connections in a forked child
    runtime = get_runtime()
    if _pool_index() == 0:  # one start-up line per worker, not one per pool process
        threading.Thread(target=_log_storage_check, args=(runtime,), name="storage-check", daemon=True).start()
    if runtime.settings.preload_model:
        runtime.restorer  # noqa: B018 - loads and caches the model


def _pool_index() -> int | None:
    from billiard.process import current_process

    return getattr(current_process(), "index", None)


def _log_storage_check(runtime) -> None:
    """Say at start-up what is wrong with the object store (a missing bucket names itself), in a
    thread: an unreachable endpoint must not hold up the pool process's start."""
    try:
        runtime.store.check()
    except StorageError as exc:
        log.error("object store: %s", exc)
    except Exception:
        log.exception("object store: the start-up check failed")
    else:
        log.info("object store: %s answered", runtime.store.url)


# Each retry's claim spends one of the job's attempts (jobs.attempts), so no jitter here: a countdown
# drawn near 0 would spend the budget inside one short outage.
@app.task(name="pikfix.restore_job", bind=True, acks_late=True, reject_on_worker_lost=True,
          throws=(JobFailed,), autoretry_for=(TransientError,), retry_jitter=False, **TRANSIENT_RETRY)
def restore_job(self, job_id: str) -> str:
    runtime = get_runtime()
    eager = self.request.is_eager
    try:
        with _heartbeat(runtime, job_id, enabled=not eager):
            outcome = run_restore_job(runtime, job_id)
    except SoftTimeLimitExceeded:
        message = f"exceeded the {runtime.settings.job_soft_time_limit_s} s time limit"
        _fail_active(runtime, job_id, "time_limit", message)
        return _failed(eager, "time_limit", message)
    except TransientError as exc:
        # Celery retries it (autoretry_for) while the job's own budget lasts: stop before the
        # dead-letter rule would hide the storage/database error behind ``too_many_attempts``.
        if eager or self.request.retries >= min(self.max_retries, runtime.settings.job_max_attempts - 1):
            fail_after_retries(runtime, job_id, exc)
            return _failed(eager, "transient_error_exhausted", f"gave up after retries: {exc}")
        log.warning("job %s: transient error, retry %d: %s", job_id, self.request.retries + 1, exc)
        raise
    except Exception as exc:
        # A bug, not bad input: record it on the job (no blind retry loop) and keep the worker going.
        log.exception("job %s: unexpected error", job_id)
        message = f"{type(exc).__name__}: {exc}"
        _fail_active(runtime, job_id, "internal_error", message)
        return _failed(eager, "internal_error", message)
    log.info("job %s %s %s", job_id, outcome.status, outcome.detail)
    # This delivery's claim found the job out of attempts and moved it to failed (the dead letter).
    dead_lettered = outcome.status == "skipped" and outcome.detail == TOO_MANY_ATTEMPTS
    if (outcome.status != "skipped" or dead_lettered) and not eager:
        _send_next(runtime, job_id)
    if outcome.status == "failed":
        code, _, message = outcome.detail.partition(": ")
        return _failed(eager, code, message)
    if dead_lettered:
        return _failed(eager, TOO_MANY_ATTEMPTS, f"moved to failed after {runtime.settings.job_max_attempts} attempts")
    return outcome.status


def _failed(eager: bool, code: str, message: str) -> str:
    """A worker's task fails with the job (:class:`JobFailed`); run in-process (the embedded mode and
    its report) it returns ``failed``, because an eager task's exception would reach the caller."""
    if eager:
        return "failed"
    raise JobFailed(code, message)


@contextmanager
def _heartbeat(runtime, job_id: str, enabled: bool = True):
    """Touch the job's ``heartbeat_at`` every ``job_heartbeat_s`` while this process runs it.

    The maintenance task re-sends a running job whose heartbeat is older than
    ``job_heartbeat_timeout_s``: a SIGKILLed or lost worker's job runs again within minutes, not
    after the hard time limit. Torch releases the GIL, so the beat keeps time during a forward.
    """
    if not enabled:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(runtime.settings.job_heartbeat_s):
            try:
                with session_scope(runtime.database_url) as s:
                    if not repo.touch_heartbeat(s, job_id):
                        return
            except Exception:
                log.warning("job %s: heartbeat not recorded", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _fail_active(runtime, job_id: str, code: str, message: str) -> None:
    try:
        with session_scope(runtime.database_url) as s:
            repo.fail_job(s, job_id, None, code, message, worker=runtime.hostname)
    except TRANSIENT_ERRORS:
        log.exception("could not record %s for job %s; the maintenance task will re-send it", code, job_id)


def _send_next(runtime, job_id: str) -> None:
    """Keep the tenant's pipe full without waiting for beat: meter in its next queued jobs."""
    try:
        with session_scope(runtime.database_url) as s:
            job = repo.get_job_any_tenant(s, job_id)
            tenant_id = job.tenant_id
        dispatch_tenant(runtime, tenant_id)
    except (*TRANSIENT_ERRORS, KombuOperationalError):
        log.warning("could not dispatch follow-up jobs; the maintenance task will", exc_info=True)


# --------------------------------------------------------------------------- tasks lost with their worker

# Which start of its worker a note belongs to: set when the worker process imports this module, and
# inherited by the pool processes it forks.
_WORKER_START = uuid.uuid4().hex
_NOTES_TTL_S = 7 * 24 * 3600  # the notes of a name never started again go away by themselves
_notes_clients: dict[int, object] = {}


def _notes_key(hostname: str) -> str:
    return f"pikfix:tasks-running:{hostname}"


def _notes_client():
    """A Redis client on the broker for this process, or ``None`` when the broker is not Redis."""
    from service.settings import get_settings

    url = get_settings().broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return None
    client = _notes_clients.get(os.getpid())
    if client is None:  # never a client inherited through fork
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        _notes_clients.clear()
        _notes_clients[os.getpid()] = client
    return client


def _notes_for(task):
    """(client, key) of the worker's running-task notes, or None for eager runs and non-Redis brokers."""
    request = getattr(task, "request", None)
    if request is None or request.is_eager or not request.hostname or not task.name.startswith("pikfix."):
        return None
    client = _notes_client()
    return None if client is None else (client, _notes_key(request.hostname))


@task_prerun.connect
def _note_running(task_id=None, task=None, args=None, **_: object) -> None:
    notes = _notes_for(task)
    if notes is None:
        return
    client, key = notes
    note = json.dumps(
        {"task": task.name, "args": short_repr(list(args or ())), "start": _WORKER_START, "at": time.time()}
    )
    try:
        with client.pipeline() as pipe:
            pipe.hset(key, task_id, note).expire(key, _NOTES_TTL_S).execute()
    except Exception:
        log.warning("task %s: could not note it as running", task_id, exc_info=True)


@task_postrun.connect
def _note_ended(task_id=None, task=None, **_: object) -> None:
    notes = _notes_for(task)
    if notes is None:
        return
    client, key = notes
    try:
        client.hdel(key, task_id)
    except Exception:
        log.warning("task %s: could not clear its running note", task_id, exc_info=True)


@worker_ready.connect
def _report_lost_tasks(sender=None, **_: object) -> None:
    """Report the tasks an earlier run of this worker name was running when it died as failed.

    Flower knows a task only from events; a SIGKILLed worker sends none, so its last task stays
    STARTED, under a name that is online again once the worker restarts. The job itself is not
    affected: its heartbeat lapses and the maintenance task re-sends it.
    """
    from billiard.exceptions import WorkerLostError

    hostname = getattr(sender, "hostname", None)
    client = _notes_client() if hostname else None
    if client is None:
        return
    key = _notes_key(hostname)
    try:
        notes = {k.decode(): json.loads(v) for k, v in client.hgetall(key).items()}
        lost = {task_id: note for task_id, note in notes.items() if note.get("start") != _WORKER_START}
        if not lost:
            return
        error = WorkerLostError(
            f"worker_lost: {hostname} stopped (killed or lost) while running this task; "
            "the maintenance task re-sends its work"
        )
        with app.events.default_dispatcher(hostname=hostname) as events:
            for task_id, note in lost.items():
                events.send("task-failed", uuid=task_id, name=note.get("task"), args=note.get("args"),
                            exception=repr(error), traceback="")
        client.hdel(key, *lost)
        log.warning("%d task(s) were running when %s last stopped; reported failed: %s",
                    len(lost), hostname, ", ".join(f"{n.get('task')}[{t}]" for t, n in lost.items()))
    except Exception:
        log.warning("could not report the tasks lost when %s last stopped", hostname, exc_info=True)


# Jittered, so the tasks one outage failed do not all come back at once; the maintenance task re-sends
# any still pending after the last retry.
@app.task(name="pikfix.index_reference", acks_late=True, reject_on_worker_lost=True,
          autoretry_for=TRANSIENT_ERRORS, retry_jitter=True, **TRANSIENT_RETRY)
def index_reference(reference_id: str) -> str:
    runtime = get_runtime()
    from pikfix import imageio
    from pikfix.errors import PikFixInputError
    from workers.references import encode_descriptor

    with session_scope(runtime.database_url) as s:
        ref = repo.get_reference_any_tenant(s, reference_id)
        if ref is None or ref.status in ("indexed", "deleted"):
            return "skipped"
        key = ref.object_key
    try:
        decoded = imageio.decode_image(runtime.store.get_bytes(key), max_pixels=runtime.settings.max_image_pixels)
    except (PikFixInputError, ObjectNotFound) as exc:
        with session_scope(runtime.database_url) as s:
            repo.mark_reference_failed(s, reference_id, str(exc))
        return "failed"
    if problem := colour_problem(decoded):  # a grey photo has no colour to transfer: never indexed
        with session_scope(runtime.database_url) as s:
            repo.mark_reference_failed(s, reference_id, problem)
        return "failed"
    descriptor = runtime.extractor.describe(decoded.rgb)
    with session_scope(runtime.database_url) as s:
        repo.mark_reference_indexed(s, reference_id, encode_descriptor(descriptor))
    return "indexed"


@app.task(name="pikfix.ingest_archive", acks_late=True, reject_on_worker_lost=True,
          autoretry_for=TRANSIENT_ERRORS, retry_jitter=True, **TRANSIENT_RETRY)
def ingest_archive(archive_id: str) -> dict[str, int]:
    """Unpack an accepted zip into content-addressed originals and one queued job per photo.

    The archive is streamed from storage to a temporary file (archives may be larger than memory). A
    member that is not a usable photo becomes a failed job with its reason; a refused archive as a
    whole becomes one. The batch is never submitted here: that is the client's call, and a submitted
    batch waits for its pending archives before it can finish.
    """
    runtime = get_runtime()
    settings = runtime.settings
    with session_scope(runtime.database_url) as s:
        archive = repo.get_archive_any_tenant(s, archive_id)
        if archive is None or archive.status != "pending":
            return {"created": 0, "refused": 0}
        tenant_id, batch_id, key, name = archive.tenant_id, archive.batch_id, archive.object_key, archive.name
    with tempfile.TemporaryFile(prefix="pikfix-archive-") as spool:
        try:
            with runtime.store.open_stream(key) as source:
                shutil.copyfileobj(source, spool, 1 << 20)
        except ObjectNotFound:
            return _finish_archive(runtime, archive_id, 0, 0, "archive_missing", "the archive is no longer in storage")
        spool.seek(0)
        return _ingest_members(runtime, settings, archive_id, tenant_id, batch_id, key, name, spool)


def _ingest_members(runtime, settings, archive_id, tenant_id, batch_id, key, name, spool) -> dict[str, int]:
    created = refused = 0
    cancelled = False
    try:
        for item in iter_images(
            spool,
            max_members=settings.max_archive_members,
            max_total_bytes=settings.max_archive_uncompressed_bytes,
            max_ratio=settings.max_archive_ratio,
            max_member_bytes=settings.max_upload_bytes,
        ):
            stored = None
            if isinstance(item, Member):
                ext = os.path.splitext(item.name)[1].lower()
                stored = put_content_addressed(runtime.store, tenant_id, item.data, ext, kind="original")
            with session_scope(runtime.database_url) as s:
                locked = repo.lock_archive_for_ingest(s, archive_id)
                if locked is None:  # another delivery finished it
                    return {"created": created, "refused": refused}
                if locked[1].status == "cancelled":
                    cancelled = True
                    break
                if stored is not None:
                    member_key, sha, _ = stored
                    repo.create_job_once(s, tenant_id, batch_id, member_key, sha, item.name, len(item.data))
                    created += 1
                else:
                    repo.create_failed_job(s, tenant_id, batch_id, key, item.name, repo.SKIPPED_MEMBER, item.reason)
                    refused += 1
    except ArchiveError as exc:
        with session_scope(runtime.database_url) as s:
            repo.create_failed_job(s, tenant_id, batch_id, key, name, exc.code, exc.message)
        return _finish_archive(runtime, archive_id, created, refused, exc.code, exc.message)
    if cancelled:
        return _finish_archive(runtime, archive_id, created, refused, "batch_cancelled",
                               "the batch was cancelled before the archive was unpacked")
    if created + refused == 0:
        message = "the archive holds no files"
        with session_scope(runtime.database_url) as s:
            repo.create_failed_job(s, tenant_id, batch_id, key, name, "archive_empty", message)
        return _finish_archive(runtime, archive_id, 0, 0, "archive_empty", message)
    return _finish_archive(runtime, archive_id, created, refused)


def _finish_archive(runtime, archive_id: str, created: int, refused: int,
                    code: str | None = None, message: str | None = None) -> dict[str, int]:
    with session_scope(runtime.database_url) as s:
        repo.finish_archive(s, archive_id, created, refused, code, message)
        tenant_id = repo.get_archive_any_tenant(s, archive_id).tenant_id
    try:
        dispatch_tenant(runtime, tenant_id)
    except KombuOperationalError:
        log.warning("could not dispatch the archive's jobs; the maintenance task will", exc_info=True)
    return {"created": created, "refused": refused}
