"""What one restore job does, independent of Celery: claim, fetch, decode, choose a reference, run
Pik-Fix, encode, upload, record.

Every step that can be repeated is safe to repeat: the claim is a compare-and-set on the job row, the
result goes to a deterministic key (a retry overwrites, never duplicates), and completion is a
compare-and-set on (status, attempt), so a stale or duplicated run records nothing. Bad input ends the job
``failed`` with the input error's code; storage or database outages raise ``TransientError`` for the task
to retry with backoff.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field

import torch
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from db import repository as repo
from db.session import session_scope
from pikfix import imageio
from pikfix.errors import PikFixInputError
from pikfix.metrics import no_reference_metrics
from storage import ObjectNotFound, StorageUnavailable, result_key
from workers.references import ChosenReference, choose_reference
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

MIN_SIDE = 8  # below this there is nothing to restore and the metrics' 3x3 operators do not fit

TRANSIENT_ERRORS = (StorageUnavailable, OperationalError, PoolTimeout, ConnectionError, TimeoutError)


class TransientError(RuntimeError):
    """A failure worth retrying (storage or database unreachable); the job stays claimable."""


@dataclass
class JobOutcome:
    job_id: str
    status: str  # succeeded | failed | skipped
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


def _run(runtime: WorkerRuntime, job_id: str) -> JobOutcome:
    started = time.perf_counter()
    with session_scope(runtime.database_url) as s:
        claim = repo.claim_job(s, job_id, runtime.hostname, runtime.settings.job_max_attempts)
        if not claim.claimed:
            return JobOutcome(job_id, "skipped", claim.reason)
        job = repo.get_job_any_tenant(s, job_id)
        attempt = claim.attempt
        tenant_id, input_key = job.tenant_id, job.input_key
        output_format = job.output_format or "png"
        reference_mode, reference_id = job.reference_mode or "auto", job.reference_id

    def fail(code: str, message: str) -> JobOutcome:
        with session_scope(runtime.database_url) as s:
            repo.fail_job(s, job_id, attempt, code, message)
        log.info("job %s failed: %s: %s", job_id, code, message)
        return JobOutcome(job_id, "failed", f"{code}: {message}")

    try:
        data = runtime.store.get_bytes(input_key)
    except ObjectNotFound:
        return fail("input_missing", f"the original {input_key} is not in storage")
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
        chosen: ChosenReference = choose_reference(
            runtime, tenant_id, decoded, reference_mode, reference_id, top_k=runtime.settings.retrieval_top_k
        )
    except PikFixInputError as exc:
        return fail(exc.code, exc.message)
    chose = time.perf_counter()

    restorer = runtime.restorer
    try:
        result = restorer.restore(decoded, reference=chosen.image, reference_id=chosen.reference_id)
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
    provenance.update(job_id=job_id, reference_source=chosen.source)
    encoded = imageio.encode_image(
        result.rgb, output_format, exif=decoded.exif, xmp=decoded.xmp, dpi=decoded.dpi, provenance=provenance
    )
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
            references=chosen.candidate_rows(),
        )
    timings = {
        "fetch_decode_s": fetched - started,
        "reference_s": chose - fetched,
        "model_encode_upload_s": ran - chose,
        "total_s": time.perf_counter() - started,
    }
    if not recorded:
        return JobOutcome(job_id, "skipped", "a newer attempt owns this job; result not recorded", timings)
    return JobOutcome(job_id, "succeeded", "", timings)
