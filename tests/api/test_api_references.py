"""The reference corpus over HTTP, in-process: upload (indexed eagerly), list, inspect, delete, retrieval.

Colour checks run twice: against the usual SQLite harness, and against a fresh PostgreSQL database and
a bucket on moto's S3 server, where what is (not) stored after a refusal is what production keeps.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ApiHarness, jpeg_bytes, png_bytes
from pg_harness import postgres_s3_api
from PIL import Image

from db import repository as repo
from db.session import session_scope
from storage import put_content_addressed


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"]


def add(api, *files: tuple[str, bytes], headers=None):
    return api.client.post(
        "/v1/references",
        headers=headers or api.a,
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
    )


def test_references_are_stored_indexed_and_deduplicated(api):
    r = add(api, ("sea.jpg", jpeg_bytes(seed=1)), ("forest.jpg", jpeg_bytes(seed=2)), ("x.txt", b"text"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert [ref["name"] for ref in body["references"]] == ["sea.jpg", "forest.jpg"]
    assert all(ref["status"] == "indexed" and len(ref["sha256"]) == 64 for ref in body["references"])
    assert [(x["name"], x["code"]) for x in body["rejected"]] == [("x.txt", "not_an_image")]
    assert "descriptor" not in body["references"][0]

    # The same bytes again are the same reference.
    again = add(api, ("sea-copy.jpg", jpeg_bytes(seed=1))).json()["references"]
    assert again[0]["id"] == body["references"][0]["id"]
    listed = api.client.get("/v1/references", headers=api.a).json()["items"]
    assert len(listed) == 2
    indexed = api.client.get("/v1/references", headers=api.a, params={"status": "indexed"}).json()["items"]
    assert len(indexed) == 2
    assert error_of(api.client.get("/v1/references", headers=api.a, params={"status": "nope"})) == (
        422, "validation_error")


def test_retrieval_chooses_from_the_corpus(api):
    refs = add(api, ("a.jpg", jpeg_bytes(seed=1)), ("b.jpg", jpeg_bytes(seed=2))).json()["references"]
    job = api.client.post("/v1/jobs", headers=api.a, files={"file": ("grey.png", png_bytes(), "image/png")}).json()
    detail = api.client.get(f"/v1/jobs/{job['id']}", headers=api.a).json()
    choice = detail["reference"]
    assert choice["source"] == "retrieval" and choice["reference_id"] in {r["id"] for r in refs}
    candidates = choice["candidates"]
    assert {c["reference_id"] for c in candidates} == {r["id"] for r in refs}
    assert [c["rank"] for c in candidates] == sorted(c["rank"] for c in candidates)
    assert sum(c["used"] for c in candidates) == 1
    assert all(c["total"] is not None and c["name"] in ("a.jpg", "b.jpg") for c in candidates)
    assert choice["score"] == next(c["total"] for c in candidates if c["used"])


def test_get_and_delete_reference(api):
    ref = add(api, ("a.jpg", jpeg_bytes())).json()["references"][0]
    got = api.client.get(f"/v1/references/{ref['id']}", headers=api.a)
    assert got.status_code == 200 and got.json() == ref
    deleted = api.client.delete(f"/v1/references/{ref['id']}", headers=api.a)
    assert deleted.status_code == 204 and deleted.content == b""
    assert error_of(api.client.get(f"/v1/references/{ref['id']}", headers=api.a)) == (404, "not_found")
    assert error_of(api.client.delete(f"/v1/references/{ref['id']}", headers=api.a)) == (404, "not_found")
    assert api.client.get("/v1/references", headers=api.a).json()["items"] == []
    # A deleted reference can no longer be chosen by id.
    r = api.client.post("/v1/jobs", headers=api.a, files={"file": ("g.png", png_bytes(), "image/png")},
                        data={"reference_id": ref["id"]})
    assert error_of(r) == (422, "unknown_reference")


def test_reference_refusals(api):
    assert error_of(add(api, ("a.txt", b"hello"))) == (415, "not_an_image")
    assert error_of(add(api)) == (415, "unsupported_media_type")  # no multipart body at all
    r = api.client.post("/v1/references", headers=api.a, files={"photo": ("a.jpg", jpeg_bytes(), "image/jpeg")})
    assert error_of(r) == (422, "validation_error")  # files under another field name
    assert error_of(add(api, ("a.jpg", jpeg_bytes()), headers={"Authorization": "Bearer nope"})) == (401, "unauthorized")


# --------------------------------------------------------------------------- colour references


def scene(seed: int, width: int = 96, height: int = 72) -> np.ndarray:
    """A smooth colour scene (float RGB in [0, 1]): gradients and a few flat-coloured discs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([rng.uniform(0.2, 0.8) + rng.uniform(-0.3, 0.3) * (x / width + c * y / height)
                    for c in range(3)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.15, 0.35) * height
        rgb[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    return np.clip(rgb, 0, 1)


def grey_of(rgb: np.ndarray) -> np.ndarray:
    return np.repeat((rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=2)


def encode(rgb: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).convert(mode).save(out, fmt, **options)
    return out.getvalue()


def grey_png(seed: int = 0) -> bytes:
    return encode(scene(seed), "PNG", mode="L")


def grey_jpeg_with_chroma_noise(seed: int = 0) -> bytes:
    """A greyscale photo saved as an RGB JPEG by a scanner: equal channels but for a little noise."""
    grey = grey_of(scene(seed))
    noisy = grey + np.random.default_rng(seed).normal(0, 1.5 / 255, grey.shape)
    return encode(noisy, quality=95, subsampling=0)  # full-resolution chroma keeps the noise in the file


def light_sepia_jpeg(seed: int = 0) -> bytes:
    grey = grey_of(scene(seed))
    sepia = grey * np.array([1.07, 0.97, 0.80], np.float32) + np.array([0.02, 0, 0], np.float32)
    return encode(0.8 * grey + 0.2 * sepia)  # mean Lab chroma about 3: a cast, barely a colour


def muted_colour_jpeg(seed: int = 0) -> bytes:
    """A faded colour print: a tenth of its colour left, still a colour reference."""
    rgb = scene(seed)
    grey = grey_of(rgb)
    return encode(grey + 0.1 * (rgb - grey))


@pytest.fixture
def pg_api(tmp_path: Path, shared_models, postgres_url: str, s3_bucket) -> Iterator[ApiHarness]:
    """The ``api`` harness on a fresh PostgreSQL database and a moto S3 bucket."""
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket) as harness:
        yield harness


def _refused_alone(api: ApiHarness, name: str, data: bytes) -> dict:
    r = add(api, (name, data))
    assert error_of(r) == (422, "reference_not_colour"), r.text
    error = r.json()["error"]
    assert set(error["details"]) == {"colourfulness", "threshold"} and error["details"]["threshold"] == 7.0
    assert error["details"]["colourfulness"] < 7.0 and name in error["message"]
    return error["details"]


def test_grey_photos_are_refused_at_upload_and_nothing_is_stored(pg_api: ApiHarness) -> None:
    api = pg_api
    assert _refused_alone(api, "grey.png", grey_png()) == {"colourfulness": 0.0, "threshold": 7.0}
    _refused_alone(api, "scan.jpg", grey_jpeg_with_chroma_noise())
    _refused_alone(api, "sepia.jpg", light_sepia_jpeg())

    r = add(api, ("sea.jpg", encode(scene(1))), ("grey.png", grey_png(2)), ("faded.jpg", muted_colour_jpeg(3)),
            ("x.txt", b"text"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert [ref["name"] for ref in body["references"]] == ["sea.jpg", "faded.jpg"]
    assert all(ref["status"] == "indexed" for ref in body["references"])
    assert [(x["name"], x["code"]) for x in body["rejected"]] == [
        ("grey.png", "reference_not_colour"), ("x.txt", "not_an_image")]
    assert "colourfulness 0.0 is below 7" in body["rejected"][0]["message"]

    # Only the two colour photos reached the bucket and the database.
    assert len(api.store.list_keys(f"{api.tenant_a}/references/")) == 2
    listed = api.client.get("/v1/references", headers=api.a).json()["items"]
    assert sorted(ref["name"] for ref in listed) == ["faded.jpg", "sea.jpg"]

    # Several files, all grey: the first one's code, each file listed.
    r = add(api, ("a.png", grey_png(4)), ("b.jpg", light_sepia_jpeg(5)))
    assert error_of(r) == (422, "reference_not_colour")
    assert [d["name"] for d in r.json()["error"]["details"]] == ["a.png", "b.jpg"]


def _legacy_grey_reference(api: ApiHarness, extractor, rgb: np.ndarray, name: str) -> str:
    """A grey photo indexed as a reference the way uploads were before the colour check."""
    from workers.references import encode_descriptor

    data = encode(grey_of(rgb), "PNG", mode="L")
    key, sha, _ = put_content_addressed(api.store, api.tenant_a, data, ".png", kind="reference")
    with session_scope(api.database_url) as s:
        ref_id = repo.add_reference(s, api.tenant_a, name, key, sha).id
        assert repo.mark_reference_indexed(s, ref_id, encode_descriptor(extractor.describe(grey_of(rgb))))
    return ref_id


def _job(api: ApiHarness, photo: bytes, **fields: str) -> dict:
    r = api.client.post("/v1/jobs", headers=api.a, files={"file": ("photo.png", photo, "image/png")}, data=fields)
    assert r.status_code == 202, r.text
    return api.client.get(f"/v1/jobs/{r.json()['id']}", headers=api.a).json()


def test_retrieval_skips_grey_references_indexed_before_the_check(api: ApiHarness, shared_models) -> None:
    photo = scene(7)
    grey_photo = encode(grey_of(photo), "PNG", mode="L")

    # The only reference is grey: the job falls back as with an empty corpus instead of failing.
    grey_id = _legacy_grey_reference(api, shared_models.extractor, photo, "old-grey.png")
    job = _job(api, grey_photo)
    assert job["status"] == "succeeded", job
    assert job["reference"]["source"] == "fallback" and job["reference"]["reference_id"] is None
    ref = api.client.get(f"/v1/references/{grey_id}", headers=api.a).json()
    assert ref["status"] == "failed" and ref["error"].startswith("reference_not_colour: ")

    # A grey twin of the photo would rank first; the colour reference is used and the twin never offered.
    twin_id = _legacy_grey_reference(api, shared_models.extractor, scene(7, 94, 70), "old-twin.png")
    colour_id = add(api, ("colour.jpg", encode(scene(8)))).json()["references"][0]["id"]
    job = _job(api, grey_photo)
    assert job["status"] == "succeeded", job
    choice = job["reference"]
    assert choice["source"] == "retrieval" and choice["reference_id"] == colour_id
    assert [c["reference_id"] for c in choice["candidates"]] == [colour_id]
    assert api.client.get(f"/v1/references/{twin_id}", headers=api.a).json()["status"] == "failed"


def test_a_chosen_grey_reference_fails_the_job_with_bad_reference(api: ApiHarness, shared_models) -> None:
    grey_id = _legacy_grey_reference(api, shared_models.extractor, scene(9), "old-grey.png")
    job = _job(api, grey_png(10), reference_id=grey_id)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "bad_reference" and "not a colour photo" in job["error"]["message"]
