"""Request and response bodies of the HTTP API, kept apart from the ORM models.

Responses are built explicitly from rows (``JobOut.from_row`` …) so a new database column never leaks
into the API by accident (descriptors, API key hashes, storage keys stay inside). Request models
forbid unknown fields, so a client's typo fails with 422 instead of being silently ignored.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, model_validator

from db.models import Archive, Batch, Job, JobReference, Reference

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "awaiting_review"]
BatchStatus = Literal["open", "submitted", "finished", "cancelled"]
ReferenceStatus = Literal["pending", "indexed", "failed", "deleted"]
ReferenceMode = Literal["auto", "manual", "none"]
OutputFormat = Literal["png", "jpeg", "tiff16", "jp2"]
ReviewMode = Literal["none", "flagged", "all"]
ReviewState = Literal["pending", "approved", "rejected"]

ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
MAX_UPLOAD_NAMES = 1000


# --- text the database can keep -------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or ``None``.

    PostgreSQL's text types refuse the NUL character, and a lone UTF-16 surrogate (JSON allows
    ``"\\ud800"``) has no UTF-8 encoding: either would fail the INSERT with a 500, so both are refused
    where the input arrives, for every text field of every route.
    """
    if "\x00" in value:
        return "must not contain the NUL character (U+0000)"
    if _SURROGATE.search(value):
        return "must not contain unpaired UTF-16 surrogates"
    return None


def storable_text(value: str) -> str:
    if (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(storable_text)]
"""A text input (body field, query parameter): 422 ``validation_error`` for what the database cannot store."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code")
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# --- jobs ---------------------------------------------------------------------------------------


class JobError(BaseModel):
    code: str
    message: str | None = None


class JobTimings(BaseModel):
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = Field(None, description="wall time of the successful run")


class JobOut(BaseModel):
    id: str
    batch_id: str | None
    status: JobStatus
    attempts: int
    input_name: str | None
    input_sha256: str | None
    input_bytes: int | None
    output_format: OutputFormat
    reference_mode: ReferenceMode
    reference_id: str | None
    width: int | None = None
    height: int | None = None
    model_name: str | None = None
    checkpoint_sha256: str | None = None
    device: str | None = None
    worker: str | None = None
    error: JobError | None = None
    timings: JobTimings
    result_url: str | None = Field(None, description="API path of the restored image once succeeded (or "
                                                     "while it awaits review)")
    output_sha256: str | None = Field(None, description="SHA-256 (hex) of the stored result")
    colourize: bool = Field(True, description="false: restored only, kept grey")
    mark: bool = Field(False, description="a visible corner label on the result")
    review: ReviewState | None = Field(None, description="the review gate: pending while it awaits a decision")
    review_note: str | None = None
    redo_of: str | None = Field(None, description="the job this one redoes (a redo decided in review)")

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            batch_id=job.batch_id,
            status=job.status,  # type: ignore[arg-type]
            attempts=job.attempts,
            input_name=job.input_name,
            input_sha256=job.input_sha256,
            input_bytes=job.input_bytes,
            output_format=job.output_format,  # type: ignore[arg-type]
            reference_mode=job.reference_mode,  # type: ignore[arg-type]
            reference_id=job.reference_id,
            width=job.width,
            height=job.height,
            model_name=job.model_name,
            checkpoint_sha256=job.checkpoint_sha256,
            device=job.device,
            worker=job.worker,
            error=JobError(code=job.error_code, message=job.error_message) if job.error_code else None,
            timings=JobTimings(
                created_at=job.created_at,
                queued_at=job.queued_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                duration_s=job.duration_s,
            ),
            result_url=f"/v1/jobs/{job.id}/result" if has_result(job) else None,
            output_sha256=job.output_sha256,
            colourize=job.colourize is not False,
            mark=bool(job.mark),
            review=job.review,  # type: ignore[arg-type]
            review_note=job.review_note,
            redo_of=job.redo_of,
        )


def has_result(job: Job) -> bool:
    """A result can be downloaded once the job succeeded, while it awaits review, and after a person
    rejected it (kept, for comparison with its redo)."""
    return bool(job.output_key) and (job.status in ("succeeded", "awaiting_review") or job.review == "rejected")


class ReferenceCandidate(BaseModel):
    reference_id: str | None
    name: str | None = None
    rank: int
    total: float | None = Field(None, description="combined retrieval score (higher is closer)")
    texture: float | None = None
    structure: float | None = None
    used: bool
    source: Literal["retrieval", "manual", "fallback"]


class ReferenceChoice(BaseModel):
    reference_id: str | None = Field(description="the reference applied; null when none was (grey fallback)")
    name: str | None = None
    source: Literal["retrieval", "manual", "fallback"]
    score: float | None = None
    candidates: list[ReferenceCandidate]


class JobDetail(JobOut):
    reference: ReferenceChoice | None = Field(None, description="set once the job ran")
    metrics: dict[str, float] = Field(default_factory=dict, description="quality figures, name -> value")

    @classmethod
    def from_parts(
        cls, job: Job, rows: list[JobReference], names: dict[str, str], metrics: dict[str, float]
    ) -> JobDetail:
        base = JobOut.from_row(job).model_dump()
        candidates = [
            ReferenceCandidate(
                reference_id=r.reference_id,
                name=names.get(r.reference_id) if r.reference_id else None,
                rank=r.rank,
                total=r.total,
                texture=r.texture,
                structure=r.structure,
                used=r.used,
                source=r.source,  # type: ignore[arg-type]
            )
            for r in rows
        ]
        choice = None
        if candidates:
            used = next((c for c in candidates if c.used), None)
            choice = ReferenceChoice(
                reference_id=used.reference_id if used else None,
                name=used.name if used else None,
                source=used.source if used else candidates[0].source,
                score=used.total if used else None,
                candidates=candidates,
            )
        return cls(**base, reference=choice, metrics=metrics)


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null at the end")


class Rejected(BaseModel):
    """A file refused at upload (the others in the same request were accepted)."""

    name: str
    code: str
    message: str


class JobForm(_Request):
    """The form fields of a single-job upload; whether a reference file came too is validation context."""

    reference_id: str | None = Field(None, pattern=ID_PATTERN)
    reference_mode: ReferenceMode | None = None
    output_format: OutputFormat = "png"
    colourize: bool = Field(True, description="false: restore only and keep the photo grey")
    mark: bool = Field(False, description="a visible corner label on the result (access copies)")

    @model_validator(mode="after")
    def _one_reference(self, info: ValidationInfo) -> JobForm:
        uploaded = bool((info.context or {}).get("reference_upload"))
        if self.reference_id and uploaded:
            raise ValueError("send either reference_id or a reference file, not both")
        has_ref = bool(self.reference_id) or uploaded
        self.reference_mode = self.reference_mode or ("manual" if has_ref else "auto")
        if self.reference_mode == "manual" and not has_ref:
            raise ValueError("reference_mode 'manual' needs reference_id or a reference file")
        if self.reference_mode != "manual" and has_ref:
            raise ValueError(f"a reference was given but reference_mode is {self.reference_mode!r}")
        return self


class PhotosAccepted(BaseModel):
    jobs: list[JobOut]
    rejected: list[Rejected] = Field(default_factory=list)


# --- batches ------------------------------------------------------------------------------------


class BatchOptions(_Request):
    reference_mode: ReferenceMode = "auto"
    reference_id: Text | None = Field(None, pattern=ID_PATTERN, description="required for reference_mode=manual")
    output_format: OutputFormat = "png"
    working_size: int | None = Field(None, ge=32, le=4096, description="colourization resolution (short side)")
    colourize: StrictBool = Field(True, description="false: restore only and keep the photos grey")
    mark: StrictBool = Field(False, description="a visible corner label on each result (access copies)")
    review: ReviewMode = Field("none", description="which results wait for a person's decision: none, those the "
                                                   "report flags, or all")


class BatchCreate(_Request):
    name: Text = Field(min_length=1, max_length=200)
    options: BatchOptions = Field(default_factory=BatchOptions)
    webhook_url: Text | None = Field(
        None, max_length=2000, pattern=r"^https?://[^\s]+$", description="POSTed (signed) when the batch finishes"
    )


class BatchProgressOut(BaseModel):
    counts: dict[str, int]
    total: int
    done: int
    done_fraction: float
    throughput_per_min: float | None = Field(None, description="photos per minute so far")
    eta_s: float | None = Field(None, description="seconds left at the current rate; null before any finished")


class BatchOut(BaseModel):
    id: str
    name: str
    status: BatchStatus
    options: dict[str, Any]
    webhook_url: str | None
    total_jobs: int
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    progress: BatchProgressOut
    pending_archives: int = Field(0, description="archives accepted but not yet unpacked; the batch "
                                                 "cannot finish before they are")
    report_url: str | None = Field(None, description="API path of the HTML report once finished")

    @classmethod
    def from_row(cls, batch: Batch, progress: BatchProgressOut, pending_archives: int = 0) -> BatchOut:
        return cls(
            id=batch.id,
            name=batch.name,
            status=batch.status,  # type: ignore[arg-type]
            options=dict(batch.options or {}),
            webhook_url=batch.webhook_url,
            total_jobs=batch.total_jobs,
            created_at=batch.created_at,
            submitted_at=batch.submitted_at,
            finished_at=batch.finished_at,
            progress=progress,
            pending_archives=pending_archives,
            report_url=f"/v1/batches/{batch.id}/report" if batch.report_key else None,
        )


class BatchPage(BaseModel):
    items: list[BatchOut]
    next_cursor: str | None = None


class BatchCancelled(BaseModel):
    batch: BatchOut
    cancelled_jobs: int = Field(description="queued jobs cancelled by this call (running ones finish)")


class BatchResent(BaseModel):
    batch: BatchOut
    resent_job_ids: list[str] = Field(description="jobs found stuck and sent to the workers again")


class ArchiveInfo(BaseModel):
    id: str
    name: str
    bytes: int
    members: int = Field(description="entries in the archive's central directory")


class ArchiveOut(BaseModel):
    """An archive of a batch: ``pending`` until unpacked, then ``ingested`` or ``failed`` (with why)."""

    id: str
    name: str
    bytes: int | None
    status: Literal["pending", "ingested", "failed"]
    created_jobs: int
    refused_members: int
    error_code: str | None
    error_message: str | None
    created_at: datetime
    ingested_at: datetime | None

    @classmethod
    def from_row(cls, archive: Archive) -> ArchiveOut:
        return cls.model_validate(archive, from_attributes=True)


class ArchiveList(BaseModel):
    items: list[ArchiveOut]


class ArchiveAccepted(BaseModel):
    batch: BatchOut
    archive: ArchiveInfo


class UploadsRequest(_Request):
    files: list[Text] = Field(min_length=1, max_length=MAX_UPLOAD_NAMES, description="file names to upload")


class PresignedUpload(BaseModel):
    name: str = Field(description="the name as sent")
    stored_name: str = Field(description="the sanitised name the object is stored under")
    url: str
    method: Literal["PUT"] = "PUT"
    expires_in_s: int


class UploadsOut(BaseModel):
    uploads: list[PresignedUpload]


class SubmitRequest(_Request):
    files: list[Text] | None = Field(
        None,
        max_length=100_000,
        description="names uploaded through presigned URLs that must all be present; default: every upload",
    )
    digests: dict[Text, Text] | None = Field(
        None,
        max_length=100_000,
        description="the SHA-256 of files by name, as `sha-256=:<base64>:` (RFC 9530) or hex; each is verified "
                    "(422 `digest_mismatch`)",
    )


class SubmitOut(BaseModel):
    batch: BatchOut
    registered: int = Field(description="jobs created from presigned uploads by this call")
    archives: int = Field(0, description="presigned .zip uploads handed to the ingest task by this call; "
                                         "their photos become jobs of this batch before it can finish")
    rejected: list[Rejected] = Field(default_factory=list)


class JobCancelled(BaseModel):
    job: JobOut
    stopping: bool = Field(description="true while a running job is on its way to its next safe point")


class ReviewRequest(_Request):
    decision: Literal["approve", "reject", "redo"]
    note: Text | None = Field(None, max_length=4000, description="why; kept with the decision")
    reference_id: Text | None = Field(None, pattern=ID_PATTERN, description="redo only: the colour reference of "
                                                                            "the new attempt")

    @model_validator(mode="after")
    def _reference_for_redo(self) -> ReviewRequest:
        if self.reference_id and self.decision != "redo":
            raise ValueError("reference_id is only taken with decision 'redo'")
        return self


class ReviewOut(BaseModel):
    job: JobOut
    redo: JobOut | None = Field(None, description="the new attempt a redo queued")


# --- references ---------------------------------------------------------------------------------


class ReferenceOut(BaseModel):
    id: str
    name: str
    status: ReferenceStatus
    sha256: str
    created_at: datetime
    indexed_at: datetime | None
    error: str | None

    @classmethod
    def from_row(cls, ref: Reference) -> ReferenceOut:
        return cls(
            id=ref.id,
            name=ref.name,
            status=ref.status,  # type: ignore[arg-type]
            sha256=ref.sha256,
            created_at=ref.created_at,
            indexed_at=ref.indexed_at,
            error=ref.error,
        )


class ReferencesAccepted(BaseModel):
    references: list[ReferenceOut]
    rejected: list[Rejected] = Field(default_factory=list)


class ReferenceList(BaseModel):
    items: list[ReferenceOut]


# --- health -------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str
    duration_ms: float


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]
    error: ErrorInfo | None = None


# --- multipart request bodies (documented by hand: the handlers stream the body themselves) ------


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def multipart_body(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose multipart body is parsed by ``api.uploads``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": required},
                }
            },
        }
    }


JOB_UPLOAD_BODY = multipart_body(
    {
        "file": _binary("the photo (format sniffed from its bytes)"),
        "reference": _binary("optional colour reference photo; added to the tenant's corpus and used for this job"),
        "reference_id": {"type": "string", "pattern": ID_PATTERN, "description": "a reference of the corpus"},
        "reference_mode": {"type": "string", "enum": ["auto", "manual", "none"]},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "tiff16", "jp2"]},
        "colourize": {"type": "boolean", "default": True, "description": "false: restore only, keep it grey"},
        "mark": {"type": "boolean", "default": False, "description": "a visible corner label on the result"},
    },
    ["file"],
)

PHOTOS_UPLOAD_BODY = multipart_body(
    {
        "files": {"type": "array", "items": _binary("a photo"), "description": "one or many photos"},
        "digests": {"type": "string", "description": "JSON object: file name -> its SHA-256 as `sha-256=:<base64>:` "
                                                      "or hex; each named file is verified"},
    },
    ["files"],
)

ARCHIVE_UPLOAD_BODY = multipart_body({"file": _binary("a zip archive of photos")}, ["file"])

REFERENCES_UPLOAD_BODY = multipart_body(
    {"files": {"type": "array", "items": _binary("a colour photo"), "description": "one or many reference photos"}},
    ["files"],
)
