"""Archival integrity: PREMIS 3 provenance export and on-demand fixity checks of stored objects.

- ``GET /v1/jobs/{id}/premis`` and ``GET /v1/batches/{id}/premis``: the provenance as PREMIS 3.0 XML
  (valid against the Library of Congress schema), or the same content as JSON with ``?format=json`` or
  ``Accept: application/json``.
- ``POST /v1/batches/{id}/fixity-check`` sends a task that re-reads and hashes every stored original and
  result of the batch; ``GET`` on the same path answers the latest check's status, counts and failures.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.archival_schemas import FixityCheckOut, PremisDocument
from api.deps import ApiContext, Principal, checked_id, get_context, require_tenant
from api.errors import ApiError, error_responses, not_found
from db import repository as repo
from db.repository import Provenance, batch_provenance, job_provenance
from workers.fixity import fixity_check, new_summary, read_summary, summary_key, write_summary
from workers.premis import premis_xml, provenance_document

router = APIRouter(prefix="/v1", tags=["archival"])

XML = "application/xml"
PREMIS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {XML: {}}, "description": "PREMIS 3.0 XML by default; the same content as JSON on request"},
    **error_responses(401, 404),
}


def premis_format(
    request: Request,
    fmt: Literal["xml", "json"] | None = Query(None, alias="format", description="`xml` (default) or `json`"),
) -> str:
    """``?format=`` wins; otherwise ``Accept: application/json`` (naming no XML type) asks for JSON."""
    if fmt:
        return fmt
    accept = request.headers.get("accept", "")
    return "json" if "application/json" in accept and "xml" not in accept else "xml"


def premis_answer(prov: Provenance | None, what: str, fmt: str, filename: str) -> Response | PremisDocument:
    """The document as XML (a file to keep: it is named) or as the JSON schema; 404 when ``prov`` is None."""
    if prov is None:
        raise not_found(what)
    document = provenance_document(prov)
    if fmt == "json":
        return PremisDocument.model_validate(document)
    return Response(premis_xml(document), media_type=XML,
                    headers={"Content-Disposition": f'inline; filename="{filename}.premis.xml"'})


@router.get("/jobs/{job_id}/premis", response_model=PremisDocument, responses=PREMIS_RESPONSES,
            summary="A job's provenance (PREMIS 3)")
def get_job_premis(
    job_id: str,
    fmt: str = Depends(premis_format),
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> Response | PremisDocument:
    """The job's original, result and reference used with their SHA-256, its events and the agents."""
    checked_id(job_id, "job")
    with ctx.session(readonly=True) as s:
        return premis_answer(job_provenance(s, principal.tenant_id, job_id), "job", fmt, f"job-{job_id}")


@router.get("/batches/{batch_id}/premis", response_model=PremisDocument, responses=PREMIS_RESPONSES,
            summary="A batch's provenance (PREMIS 3)")
def get_batch_premis(
    batch_id: str,
    fmt: str = Depends(premis_format),
    principal: Principal = Depends(require_tenant),
    ctx: ApiContext = Depends(get_context),
) -> Response | PremisDocument:
    """Every job of the batch in one document; the batch itself is an intellectual entity object."""
    checked_id(batch_id, "batch")
    with ctx.session(readonly=True) as s:
        return premis_answer(batch_provenance(s, principal.tenant_id, batch_id), "batch", fmt, f"batch-{batch_id}")


def require_batch(ctx: ApiContext, tenant_id: str, batch_id: str) -> None:
    """404 unless the batch is the tenant's."""
    checked_id(batch_id, "batch")
    with ctx.session(readonly=True) as s:
        if repo.get_batch(s, tenant_id, batch_id) is None:
            raise not_found("batch")


def send_fixity_check(ctx: ApiContext, tenant_id: str, batch_id: str) -> dict[str, Any]:
    """Store a queued summary, then send the task (in the embedded mode it runs here and now).

    If the broker refuses, the previous summary is put back and the client gets 503 to retry.
    """
    store = ctx.store
    previous = read_summary(store, tenant_id, batch_id)
    summary = new_summary(batch_id)
    write_summary(store, tenant_id, summary)
    try:
        fixity_check.apply_async(args=[batch_id, summary["id"]])
    except Exception as exc:
        if ctx.eager:  # the task ran here and broke: a bug, not an outage
            raise
        if previous is not None:
            write_summary(store, tenant_id, previous)
        else:
            store.delete(summary_key(tenant_id, batch_id))
        raise ApiError("broker_unavailable", "the task queue is not reachable; try again later",
                       headers={"Retry-After": "5"}) from exc
    return read_summary(store, tenant_id, batch_id) or summary


@router.post("/batches/{batch_id}/fixity-check", status_code=202, response_model=FixityCheckOut,
             responses=error_responses(401, 404), summary="Re-verify a batch's stored files")
def start_fixity_check(
    batch_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> FixityCheckOut:
    """Every original and result of the batch is read back from storage and its SHA-256 compared with the
    one recorded; each object checked becomes a fixity event of its job. Poll ``GET`` on this path."""
    require_batch(ctx, principal.tenant_id, batch_id)
    return FixityCheckOut.model_validate(send_fixity_check(ctx, principal.tenant_id, batch_id))


@router.get("/batches/{batch_id}/fixity-check", response_model=FixityCheckOut,
            responses=error_responses(401, 404), summary="The latest fixity check of a batch")
def get_fixity_check(
    batch_id: str, principal: Principal = Depends(require_tenant), ctx: ApiContext = Depends(get_context)
) -> FixityCheckOut:
    """Status and counts of the latest check, and each object that failed (job, object, both digests);
    404 ``not_found`` when the batch was never checked."""
    require_batch(ctx, principal.tenant_id, batch_id)
    summary = read_summary(ctx.store, principal.tenant_id, batch_id)
    if summary is None:
        raise not_found("fixity check")
    return FixityCheckOut.model_validate(summary)
