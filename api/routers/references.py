"""A tenant's corpus of colour reference photos: upload, list, inspect, delete.

Uploaded photos are stored content-addressed (the same photo twice is one reference) and indexed by
the ``index_reference`` task, which computes the retrieval descriptor; until then a reference is
``pending`` and retrieval does not see it, though it can already be chosen by id.

Only colour photos are taken: a grey or toned photo has no colours to transfer, so it is refused here
(``reference_not_colour``, with its measured colourfulness) before anything is stored, rather than
accepted and found useless by every job that retrieves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ApiContext, Principal, checked_id, get_context, require_tenant
from api.errors import ApiError, error_responses, not_found
from api.schemas import REFERENCES_UPLOAD_BODY, ReferenceList, ReferenceOut, ReferencesAccepted, Rejected
from api.uploads import (
    MultipartLimits,
    StagedFile,
    check_and_store_images,
    inspect_image,
    read_multipart,
    refuse_all,
    take_files,
)
from db import repository as repo
from pikfix.errors import PikFixInputError

router = APIRouter(prefix="/v1/references", tags=["references"])

MAX_FILES_PER_REQUEST = 1000
REFERENCE_NOT_COLOUR = "reference_not_colour"


@dataclass
class _Refusal:
    """A refused upload, with its measurement when it was refused for lacking colour."""

    rejected: Rejected
    colourfulness: float | None = None
    threshold: float | None = None


def _colour_refusal(staged: StagedFile, max_pixels: int) -> _Refusal | None:
    """Why an upload cannot be a colour reference, or ``None``.

    A file whose header fails is left to ``check_and_store_images``, which refuses it with its code.
    """
    from pikfix.retrieval import check_reference_colour_file  # torch-heavy module: imported on first use

    try:
        info = inspect_image(staged, max_pixels)
    except PikFixInputError:
        return None
    try:
        check = check_reference_colour_file(staged.rewind(), info.format)
    except PikFixInputError as exc:
        return _Refusal(Rejected(name=staged.name, code=exc.code, message=exc.message))
    finally:
        staged.rewind()
    if check.is_colour:
        return None
    rejected = Rejected(name=staged.name, code=REFERENCE_NOT_COLOUR, message=check.reason())
    return _Refusal(rejected, check.colourfulness, check.threshold)


def _refuse(files: list[StagedFile], refusals: dict[int, _Refusal], rejected: list[Rejected]) -> ApiError:
    """Nothing usable was sent: one grey photo answers with its colourfulness, more files as a list."""
    if len(files) == 1 and (only := refusals.get(id(files[0]))) and only.colourfulness is not None:
        return ApiError(REFERENCE_NOT_COLOUR, f"{files[0].name}: {only.rejected.message}",
                        details={"colourfulness": only.colourfulness, "threshold": only.threshold})
    return refuse_all(rejected)


def require_colour_reference(staged: StagedFile, max_pixels: int) -> None:
    """Refuse a reference photo sent with another request (a job's ``reference`` file) as this route would."""
    refusal = _colour_refusal(staged, max_pixels)
    if refusal is not None:
        raise _refuse([staged], {id(staged): refusal}, [refusal.rejected])


def _add(ctx: ApiContext, tenant_id: str, files: list[StagedFile]) -> tuple[list[str], list[str], list[Rejected]]:
    """Store and register the usable colour photos; returns (all ids, ids to index, rejected).

    The colour check runs before anything is stored, so a refused photo leaves no object behind.
    """
    max_pixels = ctx.settings.max_image_pixels
    refusals = {id(f): r for f in files if (r := _colour_refusal(f, max_pixels)) is not None}
    candidates = [f for f in files if id(f) not in refusals]
    images, header_rejected = check_and_store_images(ctx.store, tenant_id, candidates, max_pixels, kind="reference")
    stored = {id(img.staged) for img in images}
    by_file = dict(zip([id(f) for f in candidates if id(f) not in stored], header_rejected, strict=True))
    by_file.update((key, r.rejected) for key, r in refusals.items())
    rejected = [by_file[id(f)] for f in files if id(f) in by_file]  # in upload order
    if not images:
        raise _refuse(files, refusals, rejected)
    ids: list[str] = []
    to_index: list[str] = []
    with ctx.session() as s:
        for img in images:
            ref = repo.add_reference(s, tenant_id, img.staged.name, img.key, img.staged.sha256)
            if ref.id not in ids:
                ids.append(ref.id)
            if ref.status == "pending" and ref.id not in to_index:
                to_index.append(ref.id)
    return ids, to_index, rejected


def _refs_out(ctx: ApiContext, tenant_id: str, ids: list[str]) -> list[ReferenceOut]:
    with ctx.session(readonly=True) as s:
        return [ReferenceOut.from_row(r) for r in repo.get_references(s, tenant_id, ids)]


@router.post(
    "",
    status_code=202,
    response_model=ReferencesAccepted,
    openapi_extra=REFERENCES_UPLOAD_BODY,
    responses=error_responses(401, 413, 415, 422, 503),
    summary="Add colour reference photos",
)
async def add_references(
    request: Request, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> ReferencesAccepted:
    """Multipart ``files``; each usable colour photo is stored and queued for indexing (status ``pending``).

    A grey or toned photo is refused with ``reference_not_colour``: in ``rejected`` beside accepted
    files, or as a 422 whose ``details`` give its ``colourfulness`` and the ``threshold`` when it was
    the only file.
    """
    limits = MultipartLimits(max_file_bytes=ctx.settings.max_upload_bytes, max_files=MAX_FILES_PER_REQUEST,
                             max_fields=0)
    with await read_multipart(request, limits) as form:
        files = take_files(form, ("files", "file"))
        ids, to_index, rejected = await run_in_threadpool(_add, ctx, principal.tenant_id, files)
    if to_index:
        await run_in_threadpool(lambda: ctx.send_index(to_index, strict=True))
    refs = await run_in_threadpool(_refs_out, ctx, principal.tenant_id, ids)
    return ReferencesAccepted(references=refs, rejected=rejected)


@router.get("", response_model=ReferenceList, responses=error_responses(401, 422), summary="List references")
def list_references(
    status: Literal["pending", "indexed", "failed"] | None = Query(None),
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> ReferenceList:
    with ctx.session(readonly=True) as s:
        return ReferenceList(items=[ReferenceOut.from_row(r) for r in repo.list_references(s, principal.tenant_id, status)])


@router.get("/{reference_id}", response_model=ReferenceOut, responses=error_responses(401, 404),
            summary="A reference")
def get_reference(
    reference_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> ReferenceOut:
    checked_id(reference_id, "reference")
    with ctx.session(readonly=True) as s:
        ref = repo.get_reference(s, principal.tenant_id, reference_id)
        if ref is None:
            raise not_found("reference")
        return ReferenceOut.from_row(ref)


@router.delete("/{reference_id}", status_code=204, response_class=Response,
               responses=error_responses(401, 404), summary="Remove a reference from the corpus")
def delete_reference(
    reference_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> Response:
    """Retrieval stops using it at once; jobs that already used it keep it in their record."""
    checked_id(reference_id, "reference")
    with ctx.session() as s:
        if not repo.delete_reference(s, principal.tenant_id, reference_id):
            raise not_found("reference")
    return Response(status_code=204)
