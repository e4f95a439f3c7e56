"""Grey references in the corpus meet a real ``pikfix worker``: no job fails ``internal_error`` for them.

References indexed before uploads were colour-checked may be grey photos. Retrieval must skip them (and
take them out of the corpus), falling back as with an empty corpus when nothing usable is left; a job
whose user chose one explicitly must fail with ``bad_reference``. The grey references are written
the way the old upload path left them: stored in S3 and indexed with a descriptor, status ``indexed``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rel_support import child_pids, wait_for

from db import repository as repo
from db.session import session_scope
from pikfix.retrieval import DescriptorExtractor
from storage import put_content_addressed
from workers.references import encode_descriptor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

TIMEOUT_S = 180.0


def _scene(seed: int, width: int = 96, height: int = 72) -> np.ndarray:
    """A smooth colour scene (uint8 RGB): gradients and a few flat-coloured discs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([rng.uniform(0.2, 0.8) + rng.uniform(-0.3, 0.3) * (x / width + c * y / height)
                    for c in range(3)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.15, 0.35) * height
        rgb[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _grey(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).convert("L"))


def _add_reference(cluster, tenant_id: str, name: str, data: bytes) -> str:
    key, sha, _ = put_content_addressed(cluster.store, tenant_id, data, ".png", kind="reference")
    with session_scope(cluster.database_url) as s:
        return repo.add_reference(s, tenant_id, name, key, sha).id


def _legacy_grey_reference(cluster, extractor: DescriptorExtractor, tenant_id: str, name: str, grey) -> str:
    ref_id = _add_reference(cluster, tenant_id, name, _png(grey))
    with session_scope(cluster.database_url) as s:
        assert repo.mark_reference_indexed(s, ref_id, encode_descriptor(extractor.describe(grey)))
    return ref_id


def _reference(cluster, tenant_id: str, ref_id: str):
    with session_scope(cluster.database_url, readonly=True) as s:
        ref = repo.get_reference(s, tenant_id, ref_id)
        s.expunge(ref)
    return ref


def _candidates(cluster, job_id: str) -> list:
    with session_scope(cluster.database_url, readonly=True) as s:
        rows = repo.job_reference_rows(s, job_id)
        s.expunge_all()
    return rows


def _finished(cluster, job_ids: list[str]) -> dict:
    def done():
        jobs = {j: cluster.job(j) for j in job_ids}
        return jobs if all(j.status in ("succeeded", "failed") for j in jobs.values()) else None

    try:
        return wait_for(done, TIMEOUT_S, f"jobs {job_ids}", interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.log_tail()}") from None


def test_grey_references_are_skipped_by_retrieval_and_refused_when_chosen(cluster) -> None:
    worker = cluster.start_worker()
    pool = child_pids(worker.pid)
    extractor = DescriptorExtractor()  # the worker's: no weights, fixed-seed backbone, same layout
    photo = _scene(1)
    grey_photo = _png(_grey(photo))

    # Tenant 1: its only reference is grey.
    alone = cluster.new_tenant()
    grey_id = _legacy_grey_reference(cluster, extractor, alone, "old-grey.png", _grey(_scene(2)))
    # Tenant 2: a grey twin of the photo (it would rank first) and a colour photo indexed by the worker.
    mixed = cluster.new_tenant()
    twin_id = _legacy_grey_reference(cluster, extractor, mixed, "old-twin.png", _grey(photo))
    colour_id = _add_reference(cluster, mixed, "colour.png", _png(_scene(3)))
    cluster.send("pikfix.index_reference", colour_id)
    wait_for(lambda: _reference(cluster, mixed, colour_id).status == "indexed", TIMEOUT_S, "the colour reference")

    _, (alone_job,) = cluster.add_jobs(alone, [("a.png", grey_photo)], {"reference_mode": "auto"})
    _, (mixed_job,) = cluster.add_jobs(mixed, [("b.png", grey_photo)], {"reference_mode": "auto"})
    _, (manual_job,) = cluster.add_jobs(
        alone, [("c.png", _png(_grey(_scene(4))))], {"reference_mode": "manual", "reference_id": grey_id}
    )
    cluster.dispatch()
    jobs = _finished(cluster, [alone_job, mixed_job, manual_job])

    # Nothing usable: the recorded grey fallback, as with an empty corpus.
    job = jobs[alone_job]
    assert (job.status, job.error_code) == ("succeeded", None), job.error_message
    (cand,) = _candidates(cluster, alone_job)
    assert cand.source == "fallback" and cand.reference_id is None and not cand.used

    # The grey twin is passed over for the colour photo and is not among the candidates.
    job = jobs[mixed_job]
    assert (job.status, job.error_code) == ("succeeded", None), job.error_message
    assert job.reference_id == colour_id
    cands = _candidates(cluster, mixed_job)
    assert [(c.reference_id, c.rank, c.used, c.source) for c in cands] == [(colour_id, 1, True, "retrieval")]

    # Chosen by the user: a clear input error, not a bug.
    job = jobs[manual_job]
    assert job.status == "failed" and job.error_code == "bad_reference"
    assert "not a colour photo" in job.error_message and "colourfulness 0.0" in job.error_message

    # Both grey photos left the corpus with the reason; the worker and its pool process never died.
    for tenant_id, ref_id in ((alone, grey_id), (mixed, twin_id)):
        ref = _reference(cluster, tenant_id, ref_id)
        assert ref.status == "failed" and ref.error.startswith("reference_not_colour: "), (ref.status, ref.error)
    with session_scope(cluster.database_url, readonly=True) as s:
        assert [r for r, _ in repo.indexed_descriptors(s, mixed)] == [colour_id]
        assert repo.indexed_descriptors(s, alone) == []
    assert worker.alive() and child_pids(worker.pid) == pool
