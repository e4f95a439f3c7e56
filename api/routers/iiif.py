"""IIIF Presentation 3 manifests of a batch: one canvas per photo, original and restored as a Choice.

A viewer (Mirador, Universal Viewer) cannot send an API key, so the manifest and its images also take
a link token in the query string (``?token=``). A caller with the key gets the manifest with a fresh
token written into every URL in it (and into the manifest's own ``id``, the URL to give a viewer). The
token names the batch, the issuing key and an expiry, signed with HMAC-SHA256 over the server secret
and that key's stored hash: it opens this batch's manifest and images only, read-only, until it expires
or the key is revoked. Images are static (IIIF level 0): the bytes from local storage, or a 307 to a
short-lived presigned URL from S3. The manifest is streamed a page of jobs at a time, so a batch of
50,000 photos never sits in memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import mimetypes
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import iiif_prezi3 as iiif
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import ApiContext, _bearer, checked_id, get_context, require_tenant
from api.errors import ApiError, error_responses, not_found, unauthorized
from api.routers.jobs import RESULT_URL_EXPIRES_S, STREAM_CHUNK, download_name
from api.schemas import Text
from api.uploads import content_digest
from db import repository as repo
from db.models import Batch, Job
from pikfix import labels
from pikfix.imageio import content_type_for
from storage import ObjectNotFound

router = APIRouter(prefix="/v1/batches", tags=["iiif"])

MANIFEST_TYPE = 'application/ld+json;profile="http://iiif.io/api/presentation/3/context.json"'
# Viewers live on other origins; access is by token in the URL (never a cookie), so any origin may read.
CORS = {"Access-Control-Allow-Origin": "*"}
TOKEN_TTL_S = 24 * 3600
TOKEN_TTL_MAX_S = 7 * 24 * 3600
PAGE = 500
_TOKEN_RE = re.compile(r"^([0-9a-f]{12})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")
_TOKEN_HELP = "link token from the manifest's URLs, for viewers that cannot send the API key"


# --------------------------------------------------------------------------- link tokens


@dataclass(frozen=True)
class Access:
    """Who reads the batch: by link token (``token``), or by API key (its prefix and stored hash, which
    a new token is bound to)."""

    tenant_id: str
    token: str | None = None
    key_prefix: str | None = None
    key_hash: str | None = None


def _signature(ctx: ApiContext, batch_id: str, prefix: str, key_hash: str, expires: int) -> str:
    """Forging one needs both the server secret and the key's stored hash (never sent to anyone)."""
    secret = hmac.new(ctx.settings.webhook_secret.encode(), b"pikfix iiif link token", hashlib.sha256).digest()
    message = f"{batch_id}|{prefix}|{key_hash}|{expires}".encode()
    return base64.urlsafe_b64encode(hmac.new(secret, message, hashlib.sha256).digest()).decode().rstrip("=")


def mint_token(ctx: ApiContext, batch_id: str, key_prefix: str, key_hash: str, ttl_s: int) -> str:
    """A token for the batch, bound to the caller's (already authenticated) API key."""
    expires = int(time.time()) + ttl_s
    return f"{key_prefix}.{expires}.{_signature(ctx, batch_id, key_prefix, key_hash, expires)}"


def verify_token(ctx: ApiContext, batch_id: str, token: str) -> str:
    """The tenant a token gives access to; 401 for a malformed, expired, forged or revoked one."""
    match = _TOKEN_RE.match(token)
    if match is None or int(match.group(2)) < time.time():
        raise unauthorized("the link token is malformed or has expired; fetch the manifest again")
    prefix, expires, given = match.group(1), int(match.group(2)), match.group(3)
    with ctx.session(readonly=True) as s:
        batch = repo.get_batch_any_tenant(s, batch_id)
        keys = repo.list_api_keys(s, batch.tenant_id) if batch is not None else []
        key = next((k for k in keys if k.prefix == prefix and k.revoked_at is None), None)
        if batch is None or key is None:
            raise unauthorized("the link token is not valid for this batch")
        if not hmac.compare_digest(given, _signature(ctx, batch_id, prefix, key.key_hash, expires)):
            raise unauthorized("the link token is not valid for this batch")
        return batch.tenant_id


def iiif_access(
    batch_id: str,
    token: Text | None = Query(None, max_length=200, description=_TOKEN_HELP),
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ctx: ApiContext = Depends(get_context),
) -> Access:
    """The API key if one is sent (as on every route), else the link token; 401 without either."""
    checked_id(batch_id, "batch")
    if credentials is not None:
        principal = require_tenant(credentials, ctx)
        return Access(principal.tenant_id, key_prefix=principal.key_prefix,
                      key_hash=repo.hash_key(credentials.credentials.strip()))
    if token:
        return Access(verify_token(ctx, batch_id, token), token=token)
    raise unauthorized("send the API key, or the link token of the manifest's URLs as ?token=")


# --------------------------------------------------------------------------- the manifest


def provenance(job: Job) -> dict[str, object]:
    """The job row as the provenance record ``pikfix.labels`` reads (the output file carries the same)."""
    return {"model": job.model_name, "checkpoint_sha256": job.checkpoint_sha256, "colourized": job.colourize,
            "reference_id": job.reference_id, "source_name": job.input_name, "source_sha256": job.input_sha256}


def _image(url: str, job: Job, label: str, media_type: str) -> iiif.AnnotationBody:
    return iiif.AnnotationBody(id=url, type="Image", format=media_type, width=job.width, height=job.height,
                               label={"en": [label]})


def canvas_json(base: str, token: str, job: Job) -> str:
    """One photo's canvas: a Choice of the restored image (shown first) and the original."""
    canvas_id = f"{base}/canvas/{job.id}"
    restored_label = "Restored and colourized" if job.colourize else "Restored"
    choice = iiif.Choice(items=[
        _image(f"{base}/images/{job.id}/restored?token={token}", job, restored_label,
               content_type_for(job.output_format)),
        _image(f"{base}/images/{job.id}/original?token={token}", job, "Original", _original_type(job)),
    ])
    annotation = iiif.Annotation(id=f"{canvas_id}/annotation", motivation="painting", target=canvas_id, body=choice)
    canvas = iiif.Canvas(
        id=canvas_id, label={"none": [job.input_name or job.id]}, width=job.width, height=job.height,
        summary={"en": [labels.describe(provenance(job))]},
        metadata=[_pair("Source SHA-256", job.input_sha256), _pair("Model", job.model_name),
                  _pair("Checkpoint SHA-256", job.checkpoint_sha256)],
        items=[iiif.AnnotationPage(id=f"{canvas_id}/page", items=[annotation])],
    )
    return canvas.json(exclude_context=True)


def _pair(label: str, value: str | None) -> iiif.KeyValueString:
    return iiif.KeyValueString(label={"en": [label]}, value={"none": [value or "unknown"]})


def _original_type(job: Job) -> str:
    return mimetypes.guess_type(job.input_key)[0] or "application/octet-stream"


def manifest_head(manifest_url: str, batch: Batch) -> str:
    """The manifest without its canvases, as JSON text open at its ``items`` array."""
    manifest = iiif.Manifest(
        id=manifest_url, label={"none": [batch.name or f"batch {batch.id}"]},
        summary={"en": ["Photos restored by pikfix: each canvas offers the restored image and the original."]},
        metadata=[_pair("Batch", batch.id), _pair("Created", batch.created_at.isoformat())],
        items=[],
    )
    head = json.loads(manifest.jsonld())
    del head["items"]
    return json.dumps(head, ensure_ascii=False)[:-1] + ', "items": ['


def manifest_chunks(ctx: ApiContext, access: Access, batch: Batch, base: str, token: str) -> Iterator[str]:
    """The manifest as text, a page of succeeded jobs at a time, each page in its own short read."""
    yield manifest_head(f"{base}/manifest?token={token}", batch)
    cursor, first = None, True
    while True:
        with ctx.session(readonly=True) as s:
            jobs, cursor = repo.list_batch_jobs(s, access.tenant_id, batch.id, "succeeded", cursor, PAGE)
            canvases = [canvas_json(base, token, job) for job in jobs if job.output_key and job.width]
        if canvases:
            yield ("" if first else ",") + ",".join(canvases)
            first = False
        if not cursor:
            break
    yield "]}"


def _load_batch(ctx: ApiContext, tenant_id: str, batch_id: str) -> Batch:
    with ctx.session(readonly=True) as s:
        batch = repo.get_batch(s, tenant_id, batch_id)
        if batch is None:
            raise not_found("batch")
        s.expunge(batch)
        return batch


@router.get(
    "/{batch_id}/iiif/manifest",
    response_class=Response,
    responses={200: {"content": {MANIFEST_TYPE: {}}, "description": "the IIIF Presentation 3 manifest"},
               **error_responses(401, 404, 422)},
    summary="The batch as a IIIF manifest",
)
def get_manifest(
    batch_id: str,
    request: Request,
    expires_s: int | None = Query(None, ge=60, le=TOKEN_TTL_MAX_S,
                                  description="lifetime of the link token written into the URLs (API key only)"),
    access: Access = Depends(iiif_access),
    ctx: ApiContext = Depends(get_context),
) -> StreamingResponse:
    """One canvas per succeeded photo, with a Choice of the restored image and the original. Called with
    the API key, every URL carries a new link token (``expires_s``, default a day); the manifest's
    ``id`` is the URL to open in a viewer. Called with ``?token=``, the same token is reused."""
    if access.token and expires_s is not None:
        raise ApiError("validation_error", "expires_s is for callers with the API key; a link token keeps its expiry")
    batch = _load_batch(ctx, access.tenant_id, batch_id)
    token = access.token or mint_token(ctx, batch_id, access.key_prefix, access.key_hash, expires_s or TOKEN_TTL_S)
    base = str(request.url_for("get_manifest", batch_id=batch_id)).removesuffix("/manifest")
    return StreamingResponse(manifest_chunks(ctx, access, batch, base, token), media_type=MANIFEST_TYPE,
                             headers=CORS)


# --------------------------------------------------------------------------- the images


@dataclass(frozen=True)
class StoredImage:
    key: str
    media_type: str
    filename: str
    sha256: str | None


def _image_source(ctx: ApiContext, tenant_id: str, batch_id: str, job_id: str, which: str) -> StoredImage:
    """Where one of the batch's images is stored, and what to say about it."""
    checked_id(job_id, "job")
    with ctx.session(readonly=True) as s:
        job = repo.get_job(s, tenant_id, job_id)
        if job is None or job.batch_id != batch_id:
            raise not_found("job")
        if which == "original":
            return StoredImage(job.input_key, _original_type(job), job.input_name or "original", job.input_sha256)
        if job.status != "succeeded" or not job.output_key:
            raise ApiError("job_not_finished", f"job is {job.status}; a result exists once it has succeeded")
        return StoredImage(job.output_key, content_type_for(job.output_format),
                           download_name(job.input_name, job.output_format), job.output_sha256)


def serve_object(ctx: ApiContext, key: str, media_type: str, filename: str, *, disposition: str = "inline",
                 missing: str = "the result is no longer in storage; retry the job",
                 headers: dict[str, str] | None = None) -> Response:
    """307 to a short-lived presigned URL when the store has them (S3); else the bytes, streamed.
    ``result_missing`` (404) when the object is gone."""
    url = ctx.store.presigned_get_url(key, expires_s=RESULT_URL_EXPIRES_S, filename=filename)
    if url:
        return RedirectResponse(url, status_code=307, headers=headers)
    try:
        size = ctx.store.size(key)
        stream = ctx.store.open_stream(key)
    except ObjectNotFound as exc:
        raise ApiError("result_missing", missing) from exc

    def chunks() -> Iterator[bytes]:
        with stream:
            while block := stream.read(STREAM_CHUNK):
                yield block

    sent = {**(headers or {}), "Content-Length": str(size),
            "Content-Disposition": f'{disposition}; filename="{filename}"'}
    return StreamingResponse(chunks(), media_type=media_type, headers=sent)


@router.get(
    "/{batch_id}/iiif/images/{job_id}/{which}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {}, "image/jp2": {}},
                     "description": "the image (local storage); `Content-Digest` carries its SHA-256"},
               307: {"description": "redirect to a short-lived download URL of the object store"},
               **error_responses(401, 404, 409, 422)},
    summary="A photo of the manifest: the original or the restored image",
)
def get_image(
    batch_id: str,
    job_id: str,
    which: Literal["original", "restored"],
    access: Access = Depends(iiif_access),
    ctx: ApiContext = Depends(get_context),
) -> Response:
    """The static image a canvas of the manifest shows (IIIF level 0); the API key or the link token."""
    image = _image_source(ctx, access.tenant_id, batch_id, job_id, which)
    headers = {**CORS, "Cache-Control": "private, max-age=3600"}
    if image.sha256:
        headers["Content-Digest"] = content_digest(image.sha256)
    return serve_object(ctx, image.key, image.media_type, image.filename, headers=headers,
                        missing=f"the {which} image is no longer in storage")


__all__ = ["router"]
