"""Multipart presigned uploads: large files go to the object store in parts, in parallel and resumably.

``POST /v1/batches/{id}/multipart`` opens an upload of one file and answers a presigned PUT URL per
part; the client PUTs the parts (each answer's ``ETag`` header names the part) and ``POST
/v1/batches/{id}/multipart/complete`` joins them. The object lands on the very key a single presigned
PUT of the same name uses (``/uploads``), so ``submit`` registers it the same way, whichever route
carried it. S3 storage only: 409 ``presigned_unavailable`` with local storage, as ``/uploads``.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import ApiContext, Principal, get_context, require_tenant
from api.errors import ApiError, error_responses
from api.routers.batches import PRESIGNED_EXPIRES_S, require_open_batch
from api.schemas import Text, _Request
from storage import safe_filename, upload_key
from storage.base import MiB, MultipartRejected

router = APIRouter(prefix="/v1/batches", tags=["batches"])

MIN_PART_BYTES = 5 * MiB  # S3's floor for every part but the last
MAX_PART_BYTES = 5 * 1024 * MiB
DEFAULT_PART_BYTES = 16 * MiB
MAX_PARTS = 10_000
MAX_OBJECT_BYTES = 5 * 1024 * 1024 * MiB  # 5 TiB, S3's largest object


class MultipartStart(_Request):
    name: Text = Field(min_length=1, max_length=1000, description="the file name, as for `/uploads`")
    size: int = Field(gt=0, le=MAX_OBJECT_BYTES, description="the file's size in bytes")
    part_size: int | None = Field(
        None, ge=MIN_PART_BYTES, le=MAX_PART_BYTES,
        description="bytes per part (the last may be smaller); default 16 MiB, raised to fit 10,000 parts",
    )


class PartUrl(BaseModel):
    part_number: int
    url: str


class MultipartStarted(BaseModel):
    name: str = Field(description="the name as sent")
    stored_name: str = Field(description="the sanitised name the object is stored under")
    upload_id: str
    part_size: int
    parts: list[PartUrl] = Field(description="PUT part `n` (bytes `(n-1)*part_size` on) to its URL")
    method: str = "PUT"
    expires_in_s: int


class PartDone(_Request):
    part_number: int = Field(ge=1, le=MAX_PARTS)
    etag: Text = Field(min_length=1, max_length=200, description="the `ETag` header of the part's PUT answer")


class MultipartComplete(_Request):
    name: Text = Field(min_length=1, max_length=1000)
    upload_id: Text = Field(min_length=1, max_length=1000)
    parts: list[PartDone] = Field(min_length=1, max_length=MAX_PARTS)


class MultipartCompleted(BaseModel):
    name: str
    stored_name: str


def part_plan(size: int, asked: int | None) -> tuple[int, int]:
    """``(part_size, parts)``: the asked (or default) part size, raised until 10,000 parts hold the file."""
    part_size = asked or DEFAULT_PART_BYTES
    if math.ceil(size / part_size) > MAX_PARTS:
        if asked:
            raise ApiError("validation_error", f"{size} bytes in parts of {part_size} would need more than "
                                               f"{MAX_PARTS} parts; choose a larger part_size")
        part_size = math.ceil(size / MAX_PARTS / MiB) * MiB
    return part_size, math.ceil(size / part_size)


def _no_presigning() -> ApiError:
    return ApiError("presigned_unavailable",
                    "presigned uploads need S3 storage; upload through /photos or /archive instead")


@router.post("/{batch_id}/multipart", response_model=MultipartStarted,
             responses=error_responses(401, 404, 409, 422), summary="Start a multipart presigned upload")
def start_multipart(
    batch_id: str, body: MultipartStart, principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> MultipartStarted:
    """An upload id and one presigned PUT URL per part for a file too large for one PUT. Complete it
    with ``/multipart/complete``; a file started twice simply has two uploads, and the last completed wins."""
    require_open_batch(ctx, principal.tenant_id, batch_id)
    part_size, count = part_plan(body.size, body.part_size)
    stored = safe_filename(body.name)
    key = upload_key(principal.tenant_id, batch_id, stored)
    upload_id = ctx.store.start_presigned_multipart(key)
    if upload_id is None:
        raise _no_presigning()
    urls = ctx.store.presigned_part_urls(key, upload_id, count, expires_s=PRESIGNED_EXPIRES_S)
    return MultipartStarted(
        name=body.name, stored_name=stored, upload_id=upload_id, part_size=part_size,
        parts=[PartUrl(part_number=n, url=url) for n, url in enumerate(urls, start=1)],
        expires_in_s=PRESIGNED_EXPIRES_S,
    )


@router.post("/{batch_id}/multipart/complete", response_model=MultipartCompleted,
             responses=error_responses(401, 404, 409, 422), summary="Complete a multipart presigned upload")
def complete_multipart(
    batch_id: str, body: MultipartComplete, principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> MultipartCompleted:
    """Join the uploaded parts into the file's object; 422 ``validation_error`` when the upload id is
    unknown (or already completed) or a part is missing or has another ETag."""
    require_open_batch(ctx, principal.tenant_id, batch_id)
    numbers = [p.part_number for p in body.parts]
    if len(set(numbers)) != len(numbers):
        raise ApiError("validation_error", "a part number is listed twice")
    stored = safe_filename(body.name)
    key = upload_key(principal.tenant_id, batch_id, stored)
    if ctx.store.presigned_put_url(key) is None:  # a local folder: nothing was ever started here
        raise _no_presigning()
    try:
        ctx.store.complete_presigned_multipart(key, body.upload_id, [(p.part_number, p.etag) for p in body.parts])
    except MultipartRejected as exc:
        raise ApiError("validation_error", f"the multipart upload cannot be completed: {exc}") from exc
    return MultipartCompleted(name=body.name, stored_name=stored)


__all__ = ["router"]
