"""Celery tasks: small, idempotent, taking ids, never objects (DESIGN.md §3)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from kombu.exceptions import OperationalError as KombuOperationalError

from db import repository as repo
from db.session import session_scope
from pikfix.storage import ObjectNotFound, put_content_addressed
from workers.app import app
from workers.archive import ArchiveError, Member, iter_images
from workers.dispatch import dispatch_tenant
from workers.pipeline import TRANSIENT_ERRORS, TransientError, fail_after_retries, run_restore_job
from workers.runtime import get_runtime

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 6


def _backoff(retries: int) -> int:
    """Exponential backoff in seconds, capped well below the broker's visibility timeout."""
    return min(300, 2 ** (retries + 1))


@worker_process_init.connect
def _load_model_in_child(**_: object) -> None:
    """Load the model in each prefork child, never in the parent (CUDA must not be forked)."""
    from db.session import dispose_engines

    dispose_engines()  # never reuse the parent's database connections in a forked child
    runtime = get_runtime()
    if runtime.settings.preload_model:
        runtime.restorer  # noqa: B018 - loads and caches the model


@app.task(name="pikfix.restore_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def restore_job(self, job_id: str) -> str:
    runtime = get_runtime()
    try:
        with _heartbeat(runtime, job_id, enabled=not self.request.is_eager):
            outcome = run_restore_job(runtime, job_id)
    except SoftTimeLimitExceeded:
        _fail_active(runtime, job_id, "time_limit", f"exceeded the {runtime.settings.job_soft_time_limit_s} s time limit")
        return "failed"
    except TransientError as exc:
        # Each retry's claim counts an attempt: stop retrying before the dead-letter rule would hide
        # the storage/database error behind ``too_many_attempts``.
        retry_budget = min(MAX_TRANSIENT_RETRIES, runtime.settings.job_max_attempts - 1)
        if self.request.retries >= retry_budget or self.request.is_eager:
            fail_after_retries(runtime, job_id, exc)
            return "failed"
        log.warning("job %s: transient error, retry %d: %s", job_id, self.request.retries + 1, exc)
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries), max_retries=MAX_TRANSIENT_RETRIES) from exc
    except Exception as exc:
        # A bug, not bad input: record it on the job (no blind retry loop) and keep the worker going.
        log.exception("job %s: unexpected error", job_id)
        _fail_active(runtime, job_id, "internal_error", f"{type(exc).__name__}: {exc}")
        return "failed"
    log.info("job %s %s %s", job_id, outcome.status, outcome.detail)
    if outcome.status != "skipped" and not self.request.is_eager:
        _send_next(runtime, job_id)
    return outcome.status


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


@app.task(name="pikfix.index_reference", bind=True, acks_late=True, reject_on_worker_lost=True)
def index_reference(self, reference_id: str) -> str:
    runtime = get_runtime()
    from pikfix import imageio
    from pikfix.errors import PikFixInputError
    from workers.references import encode_descriptor

    try:
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
        descriptor = runtime.extractor.describe(decoded.rgb)
        with session_scope(runtime.database_url) as s:
            repo.mark_reference_indexed(s, reference_id, encode_descriptor(descriptor))
        return "indexed"
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries), max_retries=MAX_TRANSIENT_RETRIES) from exc


@app.task(name="pikfix.ingest_archive", bind=True, acks_late=True, reject_on_worker_lost=True)
def ingest_archive(self, archive_id: str) -> dict[str, int]:
    """Unpack an accepted zip into content-addressed originals and one queued job per photo.

    The archive is streamed from storage to a temporary file (archives may be larger than memory). A
    member that is not a usable photo becomes a failed job with its reason; a refused archive as a
    whole becomes one. The batch is never submitted here: that is the client's call, and a submitted
    batch waits for its pending archives before it can finish.
    """
    runtime = get_runtime()
    settings = runtime.settings
    try:
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
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries), max_retries=MAX_TRANSIENT_RETRIES) from exc


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
