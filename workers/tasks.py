"""Celery tasks: small, idempotent, taking ids, never objects (DESIGN.md §3)."""

from __future__ import annotations

import io
import logging
import os

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
def ingest_archive(self, batch_id: str, archive_key: str) -> dict[str, int]:
    """Unpack an uploaded zip into content-addressed originals and one queued job per photo."""
    runtime = get_runtime()
    settings = runtime.settings
    try:
        with session_scope(runtime.database_url) as s:
            batch = repo.get_batch_any_tenant(s, batch_id)
            if batch is None or batch.status != "open":
                return {"created": 0, "skipped": 0}
            tenant_id, options = batch.tenant_id, dict(batch.options or {})
        data = runtime.store.get_bytes(archive_key)
        created = skipped = 0
        try:
            for item in iter_images(
                io.BytesIO(data),
                max_members=settings.max_archive_members,
                max_total_bytes=settings.max_archive_uncompressed_bytes,
                max_ratio=settings.max_archive_ratio,
                max_member_bytes=settings.max_upload_bytes,
            ):
                if isinstance(item, Member):
                    ext = os.path.splitext(item.name)[1].lower()
                    key, sha, _ = put_content_addressed(runtime.store, tenant_id, item.data, ext, kind="original")
                    with session_scope(runtime.database_url) as s:
                        repo.create_job_once(
                            s, tenant_id, batch_id, key, sha, item.name, len(item.data), options
                        )
                    created += 1
                else:
                    skipped += 1
                    with session_scope(runtime.database_url) as s:
                        repo.create_failed_job(
                            s, tenant_id, batch_id, archive_key, item.name, repo.SKIPPED_MEMBER, item.reason
                        )
        except ArchiveError as exc:
            with session_scope(runtime.database_url) as s:
                repo.create_failed_job(s, tenant_id, batch_id, archive_key, archive_key.rsplit("/", 1)[-1],
                                       exc.code, exc.message)
        with session_scope(runtime.database_url) as s:
            repo.submit_batch(s, tenant_id, batch_id)
        dispatch_tenant(runtime, tenant_id)
        return {"created": created, "skipped": skipped}
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries), max_retries=MAX_TRANSIENT_RETRIES) from exc
