"""What one restore job does, independent of Celery: claim, fetch, verify the original's digest, decode,
choose a reference, run Pik-Fix, encode, upload, record.

Every step that can be repeated is safe to repeat: the claim is a compare-and-set on the job row, the
result goes to a deterministic key (a retry overwrites, never duplicates), and completion is a
compare-and-set on (status, attempt), so a stale or duplicated run records nothing. Bad input ends the job
``failed`` with the input error's code; storage or database outages raise ``TransientError`` for the task
to retry with backoff. An original whose bytes no longer match the digest taken at upload ends the job
``fixity_failed`` (never retried: other bytes would be restored). A cancel asked for while the job runs is
honoured at two safe points, before the model runs and before the result is stored; a result stored by a
run cancelled after that is deleted again.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import torch
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from db import repository as repo
from db.models import FIXITY_FAILED
from db.session import session_scope
from pikfix import imageio
from pikfix.errors import PikFixInputError
from pikfix.metrics import no_reference_metrics
from storage import ObjectNotFound, StorageUnavailable, result_key
from workers.references import ChosenReference, choose_reference
from workers.report_stats import review_reasons
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

MIN_SIDE = 8  # below this there is nothing to restore and the metrics' 3x3 operators do not fit

TRANSIENT_ERRORS = (StorageUnavailable, OperationalError, PoolTimeout, ConnectionError, TimeoutError)


class TransientError(RuntimeError):
    """A failure worth retrying (storage or database unreachable); the job stays claimable."""


@dataclass
class JobOutcome:
    job_id: str
    status: str  # succeeded | awaiting_review | failed | cancelled | skipped
    detail: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def run_restore_job(runtime: WorkerRuntime, job_id: str) -> JobOutcome:
    try:
        return _run(runtime, job_id)
    except TRANSIENT_ERRORS as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


def fail_after_retries(runtime: WorkerRuntime, job_id: str, exc: BaseException) -> None:
    """Retries are spent: record the failure so the job is not stuck (best effort; the DB may be down)."""
    try:
        with session_scope(runtime.database_url) as s:
            repo.fail_job(s, job_id, None, "transient_error_exhausted", f"gave up after retries: {exc}")
    except TRANSIENT_ERRORS:
        log.exception("could not record the failure of job %s; the maintenance task will re-send it", job_id)


def _resize_plane(plane, shape: tuple[int, int]):
    """Area-resize a float32 plane to ``shape`` (h, w): the luminance matching the working-size chroma."""
    import numpy as np
    from PIL import Image

    h, w = shape
    if plane.shape == (h, w):
        return plane
    return np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BOX))


@dataclass(frozen=True)
class _Claimed:
    """What the run needs from the job row, read once in the claim's transaction."""

    attempt: int
    tenant_id: str
    input_key: str
    input_sha256: str | None
    input_name: str | None
    output_format: str
    reference_mode: str
    reference_id: str | None
    colourize: bool
    mark: bool
    review_mode: str


def _claim(runtime: WorkerRuntime, job_id: str) -> _Claimed | str:
    """Claim the job and read its settings; the refusal's reason when this delivery may not run it."""
    with session_scope(runtime.database_url) as s:
        claim = repo.claim_job(s, job_id, runtime.hostname, runtime.settings.job_max_attempts)
        if not claim.claimed:
            return claim.reason or "not claimed"
        job = repo.get_job_any_tenant(s, job_id)
        batch = repo.get_batch_any_tenant(s, job.batch_id) if job.batch_id else None
        return _Claimed(
            attempt=claim.attempt, tenant_id=job.tenant_id, input_key=job.input_key,
            input_sha256=job.input_sha256, input_name=job.input_name, output_format=job.output_format or "png",
            reference_mode=job.reference_mode or "auto", reference_id=job.reference_id,
            colourize=job.colourize is not False, mark=bool(job.mark),
            review_mode=(batch.options or {}).get("review") or "none" if batch is not None else "none",
        )


def _original_intact(runtime: WorkerRuntime, job_id: str, job: _Claimed, data: bytes) -> bool:
    """Re-verify the original against the digest taken at upload and record the check as a fixity event;
    on a mismatch the job fails ``fixity_failed`` in the same transaction (nothing is written)."""
    actual = hashlib.sha256(data).hexdigest()
    with session_scope(runtime.database_url) as s:
        intact = repo.record_fixity(s, job_id, "original", job.input_sha256, actual, actor=runtime.hostname)
        if not intact:
            repo.fail_job(s, job_id, job.attempt, FIXITY_FAILED,
                          f"storage returned other bytes for the original {job.input_key}: sha256 {actual}, "
                          f"uploaded as {job.input_sha256}", worker=runtime.hostname)
    return intact


def _cancelled_here(runtime: WorkerRuntime, job_id: str, attempt: int) -> bool:
    """A safe point: end the job ``cancelled`` if someone asked for it while it ran."""
    with session_scope(runtime.database_url) as s:
        return repo.cancel_if_requested(s, job_id, attempt, worker=runtime.hostname)


def _run(runtime: WorkerRuntime, job_id: str) -> JobOutcome:
    started = time.perf_counter()
    job = _claim(runtime, job_id)
    if isinstance(job, str):
        return JobOutcome(job_id, "skipped", job)
    attempt, tenant_id, input_key, output_format = job.attempt, job.tenant_id, job.input_key, job.output_format

    def fail(code: str, message: str) -> JobOutcome:
        with session_scope(runtime.database_url) as s:
            repo.fail_job(s, job_id, attempt, code, message)
        log.info("job %s failed: %s: %s", job_id, code, message)
        return JobOutcome(job_id, "failed", f"{code}: {message}")

    def cancelled() -> JobOutcome:
        log.info("job %s cancelled at a safe point", job_id)
        return JobOutcome(job_id, "cancelled", "cancel requested while it ran")

    try:
        data = runtime.store.get_bytes(input_key)
    except ObjectNotFound:
        return fail("input_missing", f"the original {input_key} is not in storage")
    if not _original_intact(runtime, job_id, job, data):
        log.warning("job %s: the original %s failed its fixity check", job_id, input_key)
        return JobOutcome(job_id, "failed", f"{FIXITY_FAILED}: the original's digest does not match its upload")
    source_sha256 = job.input_sha256 or hashlib.sha256(data).hexdigest()
    try:
        decoded = imageio.decode_image(data, max_pixels=runtime.settings.max_image_pixels)
    except PikFixInputError as exc:
        return fail(exc.code, exc.message)
    fetched = time.perf_counter()
    chosen_size = decoded.rgb.shape[:2]
    if min(chosen_size) < MIN_SIDE:
        height, width = chosen_size
        return fail("image_too_small", f"{width}x{height} pixels; at least {MIN_SIDE} px on each side are needed")

    try:
        chosen: ChosenReference = _reference_for(runtime, job, decoded)
    except PikFixInputError as exc:
        return fail(exc.code, exc.message)
    chose = time.perf_counter()

    if _cancelled_here(runtime, job_id, attempt):
        return cancelled()
    restorer = runtime.restorer
    try:
        result = restorer.restore(decoded, reference=chosen.image, reference_id=chosen.reference_id,
                                  colourize=job.colourize)
    except PikFixInputError as exc:  # bad input found by the model's own checks: the job's fault, not a bug
        return fail(exc.code, exc.message)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        del decoded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        height, width = chosen_size
        return fail("out_of_memory", f"out of memory restoring a {width}x{height} photo: {exc}"[:500])
    provenance = dict(result.provenance)
    provenance.update(job_id=job_id, reference_source=chosen.source, source_sha256=source_sha256,
                      source_name=PurePosixPath(job.input_name or input_key).name)
    encoded = imageio.encode_image(
        result.rgb, output_format, exif=decoded.exif, xmp=decoded.xmp, dpi=decoded.dpi, provenance=provenance,
        mark=job.mark,
    )
    if _cancelled_here(runtime, job_id, attempt):
        return cancelled()
    out_key = result_key(tenant_id, job_id, imageio.extension_for(output_format))
    runtime.store.put_bytes(out_key, encoded, content_type=imageio.content_type_for(output_format))
    ran = time.perf_counter()

    metrics = no_reference_metrics(
        result.rgb,
        input_gray=result.input_luminance,
        restored_gray=result.restored_luminance,
        L01=_resize_plane(result.restored_luminance, result.ab_working.shape[:2]),
        ab=result.ab_working,
        reference_score=chosen.score,
    )
    if result.reference_confidence is not None:
        metrics["reference_confidence"] = float(result.reference_confidence)
    needs_review = _needs_review(job, chosen, metrics)
    height, width = result.rgb.shape[:2]
    with session_scope(runtime.database_url) as s:
        recorded = repo.complete_job(
            s,
            job_id,
            attempt,
            output_key=out_key,
            model_name=restorer.model_name,
            checkpoint_sha256=restorer.checkpoint_sha256,
            device=str(restorer.device),
            width=width,
            height=height,
            metrics=metrics,
            references=chosen.candidate_rows() if job.colourize else None,
            output_sha256=hashlib.sha256(encoded).hexdigest(),
            needs_review=needs_review,
            worker=runtime.hostname,
        )
    timings = {
        "fetch_decode_s": fetched - started,
        "reference_s": chose - fetched,
        "model_encode_upload_s": ran - chose,
        "total_s": time.perf_counter() - started,
    }
    if not recorded:
        if _cancelled_here(runtime, job_id, attempt):  # cancelled while the result was being stored
            runtime.store.delete(out_key)
            return cancelled()
        return JobOutcome(job_id, "skipped", "a newer attempt owns this job; result not recorded", timings)
    return JobOutcome(job_id, "awaiting_review" if needs_review else "succeeded", "", timings)


def _reference_for(runtime: WorkerRuntime, job: _Claimed, decoded) -> ChosenReference:
    """The colour reference of the run; a restore-only job needs none and looks for none."""
    if not job.colourize:
        return ChosenReference("fallback")
    return choose_reference(runtime, job.tenant_id, decoded, job.reference_mode, job.reference_id,
                            top_k=runtime.settings.retrieval_top_k)


def _needs_review(job: _Claimed, chosen: ChosenReference, metrics: dict[str, float]) -> bool:
    """Whether the result waits for a person: every result (``review: all``), or those the batch report
    would flag on their own figures (``review: flagged``)."""
    if job.review_mode == "all":
        return True
    if job.review_mode != "flagged":
        return False
    figures = {"id": "this", "status": "succeeded", "colourize": job.colourize, "metrics": metrics,
               "reference": {"source": chosen.source, "total": chosen.score}}
    return bool(review_reasons(figures))
