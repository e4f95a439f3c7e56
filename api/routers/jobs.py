"""Single jobs: upload one photo, follow it, download its result, retry, resend or cancel it, and decide
on a result that waits for review."""

from __future__ import annotations

from functools import partial
from pathlib import PurePosixPath

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import ApiContext, Principal, checked_id, get_context, require_tenant
from api.errors import ApiError, error_responses, input_error, not_found
from api.routers.references import require_colour_reference
from api.schemas import (
    JOB_UPLOAD_BODY,
    JobCancelled,
    JobDetail,
    JobForm,
    JobOut,
    ReviewOut,
    ReviewRequest,
    has_result,
)
from api.uploads import (
    MultipartLimits,
    StagedFile,
    check_digest,
    content_digest,
    inspect_image,
    parse_digest,
    read_multipart,
    store_image,
    take_fields,
    take_files,
)
from db import repository as repo
from db.models import InvalidTransition, JobStillRunning, NotFound
from pikfix.errors import PikFixInputError
from pikfix.imageio import content_type_for, extension_for
from storage import ObjectNotFound

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_FIELDS = ("reference_id", "reference_mode", "output_format", "colourize", "mark")
STREAM_CHUNK = 1024 * 1024
RESULT_URL_EXPIRES_S = 900


def job_options(fields: dict[str, str], reference_upload: bool) -> dict[str, str | bool | None]:
    """Options of a single job from its form fields; 422 naming the first bad field or contradiction."""
    try:
        form = JobForm.model_validate(fields, context={"reference_upload": reference_upload})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError("validation_error", f"{where}: {message}" if where else message) from exc
    return form.model_dump()


def require_reference(ctx: ApiContext, tenant_id: str, ref_id: str | None) -> None:
    """A reference named in a request must be one of the tenant's live references (422 otherwise)."""
    if not ref_id:
        return
    with ctx.session(readonly=True) as s:
        if repo.get_reference(s, tenant_id, ref_id) is None:
            raise ApiError("unknown_reference", f"reference {ref_id} does not exist")


def _create_job(
    ctx: ApiContext,
    principal: Principal,
    photo: StagedFile,
    reference: StagedFile | None,
    options: dict[str, str | bool | None],
    digest: str | None = None,
) -> tuple[str, list[str]]:
    """Check the photo against the client's digest, check and store it (and the reference), then insert
    the job; returns it and references to index."""
    tenant_id = principal.tenant_id
    max_pixels = ctx.settings.max_image_pixels
    if digest is not None:
        check_digest(photo, digest)
    try:
        info = inspect_image(photo, max_pixels)
    except PikFixInputError as exc:
        raise input_error(exc, photo.name) from exc
    ref_info = None
    if reference is not None:
        try:
            ref_info = inspect_image(reference, max_pixels)
        except PikFixInputError as exc:
            raise input_error(exc, f"reference {reference.name}") from exc
        require_colour_reference(reference, max_pixels)
    require_reference(ctx, tenant_id, options["reference_id"])

    key = store_image(ctx.store, tenant_id, photo, info)
    ref_key = store_image(ctx.store, tenant_id, reference, ref_info, "reference") if reference and ref_info else None
    to_index: list[str] = []
    with ctx.session() as s:
        if reference is not None and ref_key is not None:
            ref = repo.add_reference(s, tenant_id, reference.name, ref_key, reference.sha256)
            options = {**options, "reference_id": ref.id}
            if ref.status == "pending":
                to_index.append(ref.id)
        job = repo.create_job(s, tenant_id, None, key, photo.sha256, photo.name, photo.size, options,
                              actor=principal.actor)
        job_id = job.id
    return job_id, to_index


def load_job(ctx: ApiContext, tenant_id: str, job_id: str) -> JobOut:
    with ctx.session(readonly=True) as s:
        job = repo.get_job(s, tenant_id, job_id)
        if job is None:
            raise not_found("job")
        return JobOut.from_row(job)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    openapi_extra=JOB_UPLOAD_BODY,
    responses=error_responses(401, 413, 415, 422, 503),
    summary="Restore one photo",
)
async def create_job(
    request: Request,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
    digest_header: str | None = Header(
        None, alias="Content-Digest", max_length=1000,
        description="the photo's SHA-256 as `sha-256=:<base64>:` (RFC 9530); verified before anything is stored",
    ),
) -> JobOut:
    """Upload one photo (multipart ``file``) with options; the job is queued and sent at once.

    Colour reference: ``reference_id`` (one of your references), or a ``reference`` file (added to your
    corpus and used for this photo), or neither (``reference_mode=auto``: best match from your corpus).
    ``colourize=false`` restores only (grey result); ``mark=true`` puts a visible label in a corner. With
    ``Content-Digest`` the photo's SHA-256 is checked first: 422 ``digest_mismatch`` and nothing kept.
    """
    digest = parse_digest(digest_header, "Content-Digest") if digest_header else None
    limits = MultipartLimits(max_file_bytes=ctx.settings.max_upload_bytes, max_files=2, max_fields=len(JOB_FIELDS))
    with await read_multipart(request, limits) as form:
        photos = take_files(form, ("file", "reference"))
        files = [f for f in photos if f.field == "file"]
        refs = [f for f in photos if f.field == "reference"]
        if len(files) != 1 or len(refs) > 1:
            raise ApiError("validation_error", "send exactly one 'file' and at most one 'reference'")
        options = job_options(take_fields(form, JOB_FIELDS), reference_upload=bool(refs))
        job_id, to_index = await run_in_threadpool(
            _create_job, ctx, principal, files[0], refs[0] if refs else None, options, digest
        )
    await run_in_threadpool(partial(ctx.dispatch, principal.tenant_id, must_send=job_id))
    if to_index:
        await run_in_threadpool(ctx.send_index, to_index)
    return await run_in_threadpool(load_job, ctx, principal.tenant_id, job_id)


@router.get("/{job_id}", response_model=JobDetail, responses=error_responses(401, 404), summary="A job's status")
def get_job(
    job_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> JobDetail:
    """Status, timings, attempts, error, the reference chosen (with the scored candidates) and metrics."""
    checked_id(job_id, "job")
    with ctx.session(readonly=True) as s:
        job = repo.get_job(s, principal.tenant_id, job_id)
        if job is None:
            raise not_found("job")
        rows = repo.job_reference_rows(s, job.id)
        names = repo.reference_names(s, principal.tenant_id, [r.reference_id for r in rows])
        return JobDetail.from_parts(job, rows, names, repo.job_metrics(s, job.id))


def download_name(input_name: str | None, output_format: str) -> str:
    stem = PurePosixPath(input_name or "photo").stem or "photo"
    return f"{stem}.restored{extension_for(output_format)}"


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {}, "image/jp2": {}},
              "description": "the restored image; `Content-Digest` carries its SHA-256"},
        307: {"description": "redirect to a short-lived download URL of the object store; `Content-Digest` "
                             "carries the SHA-256 of what it serves"},
        **error_responses(401, 404, 409, 503),
    },
    summary="Download the restored image",
)
def get_result(
    job_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> Response:
    """307 to a presigned URL when the store is S3; the bytes themselves with local storage. Either way
    ``Content-Digest`` gives the result's SHA-256 (also ``output_sha256`` of the job). A result waiting
    for review, or rejected in review, can be downloaded too."""
    checked_id(job_id, "job")
    with ctx.session(readonly=True) as s:
        job = repo.get_job(s, principal.tenant_id, job_id)
        if job is None:
            raise not_found("job")
        available, status, key, fmt, name = has_result(job), job.status, job.output_key, job.output_format, job.input_name
        digest = {"Content-Digest": content_digest(job.output_sha256)} if job.output_sha256 else {}
    if not available or not key:
        raise ApiError("job_not_finished", f"job is {status}; a result exists once it has succeeded")
    filename = download_name(name, fmt)
    url = ctx.store.presigned_get_url(key, expires_s=RESULT_URL_EXPIRES_S, filename=filename)
    if url:
        return RedirectResponse(url, status_code=307, headers=digest)
    try:
        size = ctx.store.size(key)
        stream = ctx.store.open_stream(key)
    except ObjectNotFound as exc:
        raise ApiError("result_missing", "the result is no longer in storage; retry the job") from exc

    def chunks():
        with stream:
            while block := stream.read(STREAM_CHUNK):
                yield block

    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{filename}"',
        **digest,
    }
    return StreamingResponse(chunks(), media_type=content_type_for(fmt), headers=headers)


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobOut,
    responses=error_responses(401, 404, 409),
    summary="Run a failed job again",
)
def retry_job(
    job_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> JobOut:
    """Only failed jobs can be retried (409 otherwise); the job is queued with a fresh attempt budget."""
    checked_id(job_id, "job")
    try:
        with ctx.session() as s:
            repo.retry_job(s, principal.tenant_id, job_id)
    except NotFound as exc:
        raise not_found("job") from exc
    except InvalidTransition as exc:
        raise ApiError("job_not_retryable", str(exc)) from exc
    ctx.dispatch(principal.tenant_id)
    return load_job(ctx, principal.tenant_id, job_id)


@router.post(
    "/{job_id}/resend",
    status_code=202,
    response_model=JobOut,
    responses=error_responses(401, 404, 409),
    summary="Send a queued or running job to the workers again",
)
def resend_job(
    job_id: str,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
    force: bool = Query(False, description="resend even though its worker still reports progress"),
) -> JobOut:
    """For a job whose worker died or whose task the broker lost: it goes back to the queue and is
    sent again now. 409 ``job_not_resendable`` for a finished job, 409 ``job_still_running`` while its
    worker's heartbeat is fresh (unless ``force``)."""
    checked_id(job_id, "job")
    try:
        with ctx.session() as s:
            repo.resend_job(
                s, principal.tenant_id, job_id, alive_within_s=ctx.settings.job_heartbeat_timeout_s, force=force
            )
    except NotFound as exc:
        raise not_found("job") from exc
    except JobStillRunning as exc:
        raise ApiError("job_still_running", str(exc)) from exc
    except InvalidTransition as exc:
        raise ApiError("job_not_resendable", str(exc)) from exc
    ctx.dispatch(principal.tenant_id)
    return load_job(ctx, principal.tenant_id, job_id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobCancelled,
    responses=error_responses(401, 404, 409),
    summary="Cancel a job",
)
def cancel_job(
    job_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> JobCancelled:
    """A queued job is cancelled and never runs. A running one stops at its next safe point (before the
    model runs, before its result is stored) and ends ``cancelled`` with no result; ``stopping`` is true
    until then. Cancelling twice is harmless; a job that has ended or awaits review answers 409
    ``job_not_cancellable``."""
    checked_id(job_id, "job")
    try:
        with ctx.session() as s:
            job = repo.cancel_job(s, principal.tenant_id, job_id, actor=principal.actor)
            out = JobOut.from_row(job)
    except NotFound as exc:
        raise not_found("job") from exc
    except InvalidTransition as exc:
        raise ApiError("job_not_cancellable", str(exc)) from exc
    if ctx.eager:  # no beat process: a cancelled batch job may have been its batch's last
        ctx.finish_batches()
    return JobCancelled(job=out, stopping=out.status == "running")


@router.post(
    "/{job_id}/review",
    response_model=ReviewOut,
    responses=error_responses(401, 404, 409, 422),
    summary="Decide on a result awaiting review",
)
def review_job(
    job_id: str,
    body: ReviewRequest,
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> ReviewOut:
    """``approve`` (the job succeeds), ``reject`` (it fails ``rejected_in_review`` with the note) or ``redo``
    (rejected, and a new job of the same original, optionally with another ``reference_id``, is queued
    and linked by ``redo_of``; the old result is kept). One decision per result: a second, or one racing
    it, answers 409 ``job_not_awaiting_review``. Each decision is an event naming the API key's prefix."""
    checked_id(job_id, "job")
    require_reference(ctx, principal.tenant_id, body.reference_id)
    try:
        with ctx.session() as s:
            outcome = repo.decide_review(s, principal.tenant_id, job_id, body.decision, note=body.note,
                                         reference_id=body.reference_id, actor=principal.actor)
            result = ReviewOut(job=JobOut.from_row(outcome.job),
                               redo=JobOut.from_row(outcome.redo) if outcome.redo else None)
    except NotFound as exc:
        raise not_found("job") from exc
    except InvalidTransition as exc:
        raise ApiError("job_not_awaiting_review", str(exc)) from exc
    if result.redo is not None:
        ctx.dispatch(principal.tenant_id)
        result.redo = load_job(ctx, principal.tenant_id, result.redo.id)
    elif ctx.eager:
        ctx.finish_batches()
    return result
