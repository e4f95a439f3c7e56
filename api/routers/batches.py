"""Batches: an album of photos restored with one set of options, uploaded three ways.

1. ``POST /v1/batches/{id}/photos``: multipart, many files per request; jobs are queued at once.
2. ``POST /v1/batches/{id}/archive``: one zip, recorded as a pending archive and unpacked by the
   ingest task into jobs.
3. ``POST /v1/batches/{id}/uploads`` gives presigned PUT URLs (S3 only); the client uploads straight to
   the object store, and ``POST /v1/batches/{id}/submit`` turns those objects into jobs (``.zip``
   uploads into pending archives).

A batch is ``open`` until the client submits it; it then finishes when its last job does and no
archive is left to unpack. Jobs are sent to the workers right after the commit that creates them
(metered per tenant), so processing starts while the client is still uploading.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from api.deps import ApiContext, Principal, checked_id, get_context, require_tenant
from api.errors import ApiError, error_responses, not_found
from api.routers.jobs import require_reference
from api.schemas import (
    ARCHIVE_UPLOAD_BODY,
    PHOTOS_UPLOAD_BODY,
    ArchiveAccepted,
    ArchiveInfo,
    ArchiveList,
    ArchiveOut,
    BatchCancelled,
    BatchCreate,
    BatchOut,
    BatchPage,
    BatchProgressOut,
    BatchResent,
    JobOut,
    JobPage,
    JobStatus,
    PhotosAccepted,
    PresignedUpload,
    Rejected,
    ReviewState,
    SubmitOut,
    SubmitRequest,
    Text,
    UploadsOut,
    UploadsRequest,
)
from api.uploads import (
    ArchiveLimits,
    CheckedImage,
    MultipartLimits,
    StagedFile,
    archive_key,
    check_and_store_images,
    digests_field,
    inspect_archive,
    is_archive_name,
    read_multipart,
    refuse_all,
    stage_stream,
    take_fields,
    take_files,
    verify_digests,
)
from db import repository as repo
from db.models import Batch, IdempotencyKeyReused, InvalidTransition, NotFound
from service.netpolicy import WebhookTargetError, check_url_syntax
from storage import ObjectNotFound, safe_filename, upload_key

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/batches", tags=["batches"])

PRESIGNED_EXPIRES_S = 3600
# The report is a self-contained page (inline CSS, data: images): nothing else may load or run in it.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
MAX_FILES_PER_REQUEST = 1000
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"


# --------------------------------------------------------------------------- helpers


def _progress_from_counts(counts: dict[str, int]) -> BatchProgressOut:
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
    return BatchProgressOut(
        counts=counts, total=total, done=done, done_fraction=(done / total) if total else 0.0,
        throughput_per_min=None, eta_s=None,
    )


def batch_out(s, batch: Batch) -> BatchOut:
    p = repo.batch_progress(s, batch.id)
    progress = BatchProgressOut(
        counts=p.counts, total=p.total, done=p.done, done_fraction=p.done_fraction,
        throughput_per_min=p.throughput_per_min, eta_s=p.eta_s,
    )
    return BatchOut.from_row(batch, progress, repo.pending_archive_count(s, batch.id))


def load_batch(ctx: ApiContext, tenant_id: str, batch_id: str) -> BatchOut:
    with ctx.session(readonly=True) as s:
        batch = repo.get_batch(s, tenant_id, batch_id)
        if batch is None:
            raise not_found("batch")
        return batch_out(s, batch)


def require_open_batch(ctx: ApiContext, tenant_id: str, batch_id: str) -> None:
    """404 for a batch the tenant does not have, 409 for one that no longer takes photos."""
    checked_id(batch_id, "batch")
    with ctx.session(readonly=True) as s:
        batch = repo.get_batch(s, tenant_id, batch_id)
        if batch is None:
            raise not_found("batch")
        if batch.status != "open":
            raise ApiError("batch_not_open", f"batch is {batch.status}; only open batches take new photos")


def _create_jobs(ctx: ApiContext, tenant_id: str, batch_id: str, images: list[CheckedImage],
                 submit: bool = False, archives: Sequence[tuple[str, str, int]] = (),
                 actor: str | None = None) -> tuple[list[str], list[str]]:
    """Queue one job per stored image, record ``(name, key, bytes)`` archives as pending and optionally
    close the batch, in one transaction; returns the job and archive ids."""
    with ctx.session() as s:
        try:  # locked: a submit arriving meanwhile waits, then counts these jobs
            repo.lock_open_batch(s, tenant_id, batch_id, exclusive=submit)
        except NotFound as exc:
            raise not_found("batch") from exc
        except InvalidTransition as exc:  # submitted or cancelled while the files were arriving
            raise ApiError("batch_not_open", str(exc)) from exc
        ids = [
            repo.create_job(s, tenant_id, batch_id, img.key, img.staged.sha256, img.staged.name,
                            img.staged.size, actor=actor).id
            for img in images
        ]
        archive_ids = [repo.add_archive(s, tenant_id, batch_id, name, key, size).id for name, key, size in archives]
        if submit:
            if not (ids or sum(repo.batch_status_counts(s, batch_id).values())
                    or repo.pending_archive_count(s, batch_id)):
                raise ApiError("batch_empty", "the batch has no photos; upload some before submitting")
            repo.submit_batch(s, tenant_id, batch_id)
    return ids, archive_ids


def _jobs_out(ctx: ApiContext, tenant_id: str, job_ids: list[str]) -> list[JobOut]:
    with ctx.session(readonly=True) as s:
        return [JobOut.from_row(j) for j in repo.get_jobs(s, tenant_id, job_ids)]


# --------------------------------------------------------------------------- create, read, list


@router.post("", status_code=201, response_model=BatchOut,
             responses={200: {"model": BatchOut, "description": "the batch an earlier request with this "
                                                                "`Idempotency-Key` created"},
                        **error_responses(401, 422)},
             summary="Create a batch")
def create_batch(
    body: BatchCreate,
    response: Response,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
        description="1 to 128 printable ASCII characters; a repeated key answers 200 with the batch it created",
    ),
) -> BatchOut:
    """A new open batch; its options apply to every photo added to it. With an ``Idempotency-Key`` a
    client may resend the request safely: the first answer is 201, each repeat 200 with the same batch,
    and 422 ``idempotency_key_reused`` if the body differs."""
    options = _checked_options(ctx, principal, body)
    with ctx.session() as s:
        if idempotency_key is None:
            return batch_out(s, repo.create_batch(s, principal.tenant_id, body.name, options, body.webhook_url))
        try:
            batch, created = repo.create_batch_once(s, principal.tenant_id, idempotency_key, body.name, options,
                                                    body.webhook_url)
        except IdempotencyKeyReused as exc:
            raise ApiError("idempotency_key_reused", str(exc)) from exc
        if not created:
            response.status_code = 200
        return batch_out(s, batch)


def _checked_options(ctx: ApiContext, principal: Principal, body: BatchCreate) -> dict:
    """The batch's options once the reference and webhook they name are acceptable (422 otherwise)."""
    options = body.options.model_dump()
    if options["reference_mode"] == "manual" and not options["reference_id"]:
        raise ApiError("validation_error", "reference_mode 'manual' needs a reference_id")
    if options["reference_id"] and options["reference_mode"] != "manual":
        raise ApiError("validation_error", "reference_id is only used with reference_mode 'manual'")
    require_reference(ctx, principal.tenant_id, options["reference_id"])
    if body.webhook_url:
        try:
            check_url_syntax(body.webhook_url, ctx.settings.webhook_allow_private)
        except WebhookTargetError as exc:
            raise ApiError("webhook_url_not_allowed", str(exc)) from exc
    return options


@router.get("", response_model=BatchPage, responses=error_responses(401, 422), summary="List batches")
def list_batches(
    cursor: Text | None = Query(None, max_length=200, description="from the previous page's next_cursor"),
    limit: int = Query(50, ge=1, le=200),
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> BatchPage:
    """The tenant's batches, newest first, with job counts per status."""
    with ctx.session(readonly=True) as s:
        batches, next_cursor = repo.list_batches_page(s, principal.tenant_id, cursor, limit)
        counts = repo.status_counts_for_batches(s, [b.id for b in batches])
        pending = repo.pending_archive_counts(s, [b.id for b in batches])
        items = [BatchOut.from_row(b, _progress_from_counts(counts[b.id]), pending.get(b.id, 0)) for b in batches]
    return BatchPage(items=items, next_cursor=next_cursor)


@router.get("/{batch_id}", response_model=BatchOut, responses=error_responses(401, 404),
            summary="A batch's progress")
def get_batch(
    batch_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> BatchOut:
    """Counts per status, fraction done, throughput (photos per minute) and ETA."""
    checked_id(batch_id, "batch")
    return load_batch(ctx, principal.tenant_id, batch_id)


@router.get("/{batch_id}/jobs", response_model=JobPage, responses=error_responses(401, 404, 422),
            summary="A batch's jobs, page by page")
def list_jobs(
    batch_id: str,
    status: JobStatus | None = Query(None),
    review: ReviewState | None = Query(None, description="`pending`: the results waiting for a decision"),
    cursor: Text | None = Query(None, max_length=200),
    limit: int = Query(100, ge=1, le=1000),
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> JobPage:
    """Jobs in upload order; pass ``next_cursor`` back as ``cursor`` until it is null."""
    checked_id(batch_id, "batch")
    with ctx.session(readonly=True) as s:
        if repo.get_batch(s, principal.tenant_id, batch_id) is None:
            raise not_found("batch")
        jobs, next_cursor = repo.list_batch_jobs(s, principal.tenant_id, batch_id, status, cursor, limit,
                                                 review=review)
        return JobPage(items=[JobOut.from_row(j) for j in jobs], next_cursor=next_cursor)


# --------------------------------------------------------------------------- uploads


def _store_photos(ctx: ApiContext, principal: Principal, batch_id: str, files: list[StagedFile],
                  digests: dict[str, str]) -> tuple[list[str], list[Rejected]]:
    verify_digests(files, digests)  # before anything is stored
    images, rejected = check_and_store_images(ctx.store, principal.tenant_id, files, ctx.settings.max_image_pixels)
    if not images:
        raise refuse_all(rejected)
    return _create_jobs(ctx, principal.tenant_id, batch_id, images, actor=principal.actor)[0], rejected


@router.post(
    "/{batch_id}/photos",
    status_code=201,
    response_model=PhotosAccepted,
    openapi_extra=PHOTOS_UPLOAD_BODY,
    responses=error_responses(401, 404, 409, 413, 415, 422, 503),
    summary="Add photos to a batch",
)
async def add_photos(
    batch_id: str,
    request: Request,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> PhotosAccepted:
    """Multipart ``files`` (one or many). Each good photo becomes a queued job; files that are not
    usable images are listed under ``rejected`` with their code. If none is usable, the answer is the
    first file's error (415/422). An optional ``digests`` field (JSON: file name -> SHA-256, as
    ``sha-256=:<base64>:`` or hex) is checked first: 422 ``digest_mismatch`` naming the file, and nothing
    of the request is kept."""
    await run_in_threadpool(require_open_batch, ctx, principal.tenant_id, batch_id)
    limits = MultipartLimits(max_file_bytes=ctx.settings.max_upload_bytes, max_files=MAX_FILES_PER_REQUEST,
                             max_fields=1)
    with await read_multipart(request, limits) as form:
        files = take_files(form, ("files", "file"))
        take_fields(form, ("digests",))
        job_ids, rejected = await run_in_threadpool(_store_photos, ctx, principal, batch_id, files,
                                                    digests_field(form))
    await run_in_threadpool(ctx.dispatch, principal.tenant_id)
    jobs = await run_in_threadpool(_jobs_out, ctx, principal.tenant_id, job_ids)
    return PhotosAccepted(jobs=jobs, rejected=rejected)


def _store_archive(ctx: ApiContext, principal: Principal, batch_id: str, staged: StagedFile) -> ArchiveInfo:
    s = ctx.settings
    members = inspect_archive(
        staged, ArchiveLimits(s.max_archive_members, s.max_archive_uncompressed_bytes, s.max_archive_ratio)
    )
    key = archive_key(principal.tenant_id, batch_id, staged.name)
    ctx.store.put_stream(key, staged.rewind(), content_type="application/zip")
    archive_id = _accept_archive(ctx, principal.tenant_id, batch_id, staged.name, key, staged.size)
    ctx.send_ingest(archive_id)
    return ArchiveInfo(id=archive_id, name=staged.name, bytes=staged.size, members=members)


def _accept_archive(ctx: ApiContext, tenant_id: str, batch_id: str, name: str, key: str, size: int) -> str:
    """The archive's pending row, committed before its ingest task is sent; 409 if the batch closed."""
    try:
        with ctx.session() as s:
            return repo.add_archive(s, tenant_id, batch_id, name, key, size).id
    except InvalidTransition as exc:
        ctx.store.delete(key)
        raise ApiError("batch_not_open", str(exc)) from exc
    except NotFound as exc:
        raise not_found("batch") from exc


@router.post(
    "/{batch_id}/archive",
    status_code=202,
    response_model=ArchiveAccepted,
    openapi_extra=ARCHIVE_UPLOAD_BODY,
    responses=error_responses(401, 404, 409, 413, 415, 422, 503),
    summary="Add a zip archive of photos to a batch",
)
async def add_archive(
    batch_id: str,
    request: Request,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> ArchiveAccepted:
    """One zip (multipart ``file``), checked from its directory (member count, sizes, compression
    ratio, at least one photo), stored, and unpacked by the ingest task, which creates a job per photo
    (a refused member becomes a failed job with its reason). A batch takes any number of archives and
    photos until it is submitted; a submitted batch finishes only after its archives are unpacked.
    The archive may be as large as a whole request (``max_request_bytes``); larger ones go through
    presigned uploads (a ``.zip`` name) and ``submit``."""
    await run_in_threadpool(require_open_batch, ctx, principal.tenant_id, batch_id)
    limits = MultipartLimits(max_file_bytes=ctx.settings.max_request_bytes, max_files=1, max_fields=0)
    with await read_multipart(request, limits) as form:
        files = take_files(form, ("file",))
        info = await run_in_threadpool(_store_archive, ctx, principal, batch_id, files[0])
    batch = await run_in_threadpool(load_batch, ctx, principal.tenant_id, batch_id)
    return ArchiveAccepted(batch=batch, archive=info)


@router.get("/{batch_id}/archives", response_model=ArchiveList, responses=error_responses(401, 404),
            summary="A batch's archives and how their unpacking went")
def list_archives(
    batch_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> ArchiveList:
    """Every archive accepted into the batch: ``pending`` until unpacked, then ``ingested`` (with the jobs
    created and members refused) or ``failed`` with its error."""
    checked_id(batch_id, "batch")
    with ctx.session(readonly=True) as s:
        if repo.get_batch(s, principal.tenant_id, batch_id) is None:
            raise not_found("batch")
        return ArchiveList(items=[ArchiveOut.from_row(a) for a in repo.list_batch_archives(s, batch_id)])


@router.post(
    "/{batch_id}/uploads",
    response_model=UploadsOut,
    responses=error_responses(401, 404, 409, 422),
    summary="Presigned URLs to upload photos straight to the object store",
)
def presign_uploads(
    batch_id: str,
    body: UploadsRequest,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> UploadsOut:
    """One PUT URL per file name (S3 storage only: 409 ``presigned_unavailable`` with local storage).
    Upload each file with ``PUT`` to its URL, then call ``submit``."""
    require_open_batch(ctx, principal.tenant_id, batch_id)
    seen: dict[str, str] = {}
    for name in body.files:
        stored = safe_filename(name)
        if stored in seen and seen[stored] != name:
            raise ApiError("validation_error", f"{name!r} and {seen[stored]!r} would be stored under one name")
        seen[stored] = name
    uploads: list[PresignedUpload] = []
    for stored, name in seen.items():
        url = ctx.store.presigned_put_url(upload_key(principal.tenant_id, batch_id, stored),
                                          expires_s=PRESIGNED_EXPIRES_S)
        if url is None:
            raise ApiError("presigned_unavailable",
                           "presigned uploads need S3 storage; upload through /photos or /archive instead")
        uploads.append(PresignedUpload(name=name, stored_name=stored, url=url, expires_in_s=PRESIGNED_EXPIRES_S))
    return UploadsOut(uploads=uploads)


def _staged_uploads(ctx: ApiContext, tenant_id: str, batch_id: str,
                    names: list[str] | None) -> list[tuple[str, str]]:
    """``(key, name)`` of the presigned uploads to register; 422 if a named one is missing."""
    prefix = upload_key(tenant_id, batch_id, "x")[: -len("x")]
    present = {key[len(prefix):]: key for key in ctx.store.list_keys(prefix)}
    if names is None:
        return [(key, name) for name, key in sorted(present.items())]
    wanted = list(dict.fromkeys(safe_filename(n) for n in names))
    missing = [n for n in wanted if n not in present]
    if missing:
        raise ApiError("upload_missing", f"{len(missing)} named file(s) were not uploaded: {missing[:10]}",
                       details=missing)
    return [(present[n], n) for n in wanted]


def _submit(ctx: ApiContext, principal: Principal, batch_id: str, names: list[str] | None,
            digests: dict[str, str]) -> SubmitOut:
    tenant_id = principal.tenant_id
    require_open_batch(ctx, tenant_id, batch_id)
    uploads = _staged_uploads(ctx, tenant_id, batch_id, names)
    archives = [(name, key, ctx.store.size(key)) for key, name in uploads if is_archive_name(name)]
    images: list[CheckedImage] = []
    rejected: list[Rejected] = []
    staged_files: list[StagedFile] = []
    try:
        for key, name in uploads:
            if is_archive_name(name):
                continue
            try:
                with ctx.store.open_stream(key) as source:
                    staged_files.append(stage_stream(source, name, ctx.settings.max_upload_bytes))
            except ObjectNotFound:
                continue  # deleted between listing and reading
            except ApiError as exc:  # over the size limit
                rejected.append(Rejected(name=name, code=exc.code, message=exc.message))
        # Every digest is checked before anything is stored; the uploads stay for the client to fix.
        verify_digests(staged_files, {n: d for n, d in digests.items() if not is_archive_name(n)}, key=safe_filename)
        for staged in staged_files:
            good, bad = check_and_store_images(ctx.store, tenant_id, [staged], ctx.settings.max_image_pixels)
            images += good
            rejected += bad
        _, archive_ids = _create_jobs(ctx, tenant_id, batch_id, images, submit=True, archives=archives,
                                      actor=principal.actor)
    finally:
        for staged in staged_files:
            staged.close()
    for key, name in uploads:  # photos were copied to content-addressed originals or refused: done with
        if is_archive_name(name):
            continue  # the ingest task reads it from here
        try:
            ctx.store.delete(key)
        except Exception:
            log.warning("could not delete staged upload %s", key, exc_info=True)
    for archive_id in archive_ids:  # the batch is submitted already: a lost send is the sweep's to redo
        ctx.send_ingest(archive_id, strict=False)
    ctx.dispatch(tenant_id)
    return SubmitOut(batch=load_batch(ctx, tenant_id, batch_id), registered=len(images),
                     archives=len(archive_ids), rejected=rejected)


@router.post(
    "/{batch_id}/submit",
    response_model=SubmitOut,
    responses=error_responses(401, 404, 409, 422, 503),
    summary="Close a batch: register presigned uploads and start processing",
)
def submit_batch(
    batch_id: str,
    body: SubmitRequest | None = Body(None),
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> SubmitOut:
    """Every object uploaded through presigned URLs becomes a job (verified to exist, hashed and
    checked like any upload); the batch stops taking photos and finishes when its last job does.
    With ``files``, each named upload must be present (422 ``upload_missing`` otherwise). With ``digests``
    (file name -> SHA-256, ``sha-256=:<base64>:`` or hex) each named photo is verified first: 422
    ``digest_mismatch`` naming the file, nothing registered, the uploads left in place."""
    return _submit(ctx, principal, batch_id, body.files if body else None, (body.digests or {}) if body else {})


# --------------------------------------------------------------------------- cancel and report


@router.post("/{batch_id}/cancel", response_model=BatchCancelled, responses=error_responses(401, 404, 409),
             summary="Cancel a batch")
def cancel_batch(
    batch_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> BatchCancelled:
    """Queued jobs are cancelled, running ones finish. Once none is left running the batch gets its
    ``finished_at``, its report (what finished, what was cancelled) and its webhook. Cancelling twice is
    harmless; a finished batch cannot be cancelled (409 ``batch_finished``)."""
    checked_id(batch_id, "batch")
    with ctx.session() as s:
        batch = repo.get_batch(s, principal.tenant_id, batch_id)
        if batch is None:
            raise not_found("batch")
        if batch.status == "finished":
            raise ApiError("batch_finished", "the batch has finished; there is nothing left to cancel")
        cancelled = (repo.cancel_batch(s, principal.tenant_id, batch_id, actor=principal.actor)
                     if batch.status != "cancelled" else 0)
    if ctx.eager:  # no beat process: settle it (report, webhook) here if nothing is left running
        ctx.finish_batches()
    return BatchCancelled(batch=load_batch(ctx, principal.tenant_id, batch_id), cancelled_jobs=cancelled)


@router.post("/{batch_id}/resend-stuck", status_code=202, response_model=BatchResent,
             responses=error_responses(401, 404, 422), summary="Send a batch's stuck jobs to the workers again")
def resend_stuck(
    batch_id: str,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
    silent_for_s: float | None = Query(None, ge=1, le=86400, description="how long a job must have been silent "
                                       "(running without a heartbeat, or sent and never started); default: the "
                                       "workers' heartbeat timeout"),
) -> BatchResent:
    """For a batch that will not finish because some of its jobs' workers died or the broker lost their
    tasks: each such job goes back to the queue and is sent again now. Jobs that are alive are left alone."""
    checked_id(batch_id, "batch")
    silent = ctx.settings.job_heartbeat_timeout_s if silent_for_s is None else silent_for_s
    try:
        with ctx.session() as s:
            resent = repo.resend_stuck_batch_jobs(s, principal.tenant_id, batch_id, silent_for_s=silent)
    except NotFound as exc:
        raise not_found("batch") from exc
    if resent:
        ctx.dispatch(principal.tenant_id)
    return BatchResent(batch=load_batch(ctx, principal.tenant_id, batch_id), resent_job_ids=resent)


@router.get(
    "/{batch_id}/report",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "the batch report"},
               **error_responses(401, 404, 503)},
    summary="The batch's HTML report",
)
def get_report(
    batch_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> HTMLResponse:
    """Written when the batch finishes, or for a cancelled batch once none of its jobs is left running;
    404 ``report_not_ready`` until then."""
    checked_id(batch_id, "batch")
    with ctx.session(readonly=True) as s:
        batch = repo.get_batch(s, principal.tenant_id, batch_id)
        if batch is None:
            raise not_found("batch")
        status, key = batch.status, batch.report_key
    if not key:
        when = "once its running jobs have ended" if status == "cancelled" else "when it finishes"
        raise ApiError("report_not_ready", f"batch is {status}; the report is written {when}")
    try:
        html = ctx.store.get_bytes(key)
    except ObjectNotFound as exc:
        raise ApiError("report_not_ready", "the report is not in storage yet") from exc
    return HTMLResponse(html, headers=REPORT_HEADERS)


__all__ = ["router"]
