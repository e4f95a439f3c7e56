"""Single jobs over HTTP, in-process: upload, options, every refusal code, result download, retry."""

from __future__ import annotations

import hashlib
import io

import pytest
from conftest import MAX_PIXELS, MAX_UPLOAD, big_png_bytes, corrupt_png, jpeg_bytes, png_bytes
from PIL import Image

from db import repository as repo
from db.session import session_scope
from storage import original_key


def post_job(api, data: bytes, name: str = "scan.png", headers=None, **fields):
    return api.client.post(
        "/v1/jobs",
        headers=api.a if headers is None else headers,
        files={"file": (name, data, "application/octet-stream")},
        data=fields,
    )


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return response.status_code, body["error"]["code"]


# --------------------------------------------------------------------------- happy path


def test_job_is_restored_and_downloadable(api):
    data = png_bytes(64, 48)
    r = post_job(api, data, name="../../album/scan 01.png", output_format="jpeg")
    assert r.status_code == 202, r.text
    job = r.json()
    # Eager mode: the job ran inside the request.
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["batch_id"] is None
    assert job["input_name"] == "scan_01.png"  # path components and odd characters stripped
    assert job["input_sha256"] == hashlib.sha256(data).hexdigest() and job["input_bytes"] == len(data)
    assert job["output_format"] == "jpeg" and job["reference_mode"] == "auto"
    assert (job["width"], job["height"]) == (64, 48)
    assert job["model_name"] == "pikfix-tiny" and len(job["checkpoint_sha256"]) == 64
    assert job["timings"]["started_at"] >= job["timings"]["created_at"] and job["timings"]["duration_s"] > 0
    # The original is stored content-addressed, with the extension of the sniffed format.
    assert api.store.exists(original_key(api.tenant_a, job["input_sha256"], ".png"))

    detail = api.client.get(f"/v1/jobs/{job['id']}", headers=api.a).json()
    assert detail["reference"]["source"] == "fallback"  # no corpus yet: grey fallback, recorded
    assert detail["reference"]["reference_id"] is None
    assert {"colourfulness", "sharpness"} <= set(detail["metrics"])

    result = api.client.get(job["result_url"], headers=api.a)
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/jpeg"
    assert result.headers["content-disposition"] == 'attachment; filename="scan_01.restored.jpg"'
    assert int(result.headers["content-length"]) == len(result.content)
    image = Image.open(io.BytesIO(result.content))
    assert image.format == "JPEG" and image.size == (64, 48)


def test_content_type_comes_from_bytes_not_name(api):
    # A JPEG named .png, sent as text/plain: stored and treated as a JPEG.
    data = jpeg_bytes()
    job = post_job(api, data, name="photo.png").json()
    assert api.store.exists(original_key(api.tenant_a, job["input_sha256"], ".jpg"))
    assert job["status"] == "succeeded"


def test_job_with_uploaded_reference_adds_it_to_the_corpus(api):
    r = api.client.post(
        "/v1/jobs",
        headers=api.a,
        files={"file": ("grey.png", png_bytes(), "image/png"),
               "reference": ("colour.jpg", jpeg_bytes(80, 60), "image/jpeg")},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["reference_mode"] == "manual" and job["reference_id"]
    refs = api.client.get("/v1/references", headers=api.a).json()["items"]
    assert [ref["id"] for ref in refs] == [job["reference_id"]]
    assert refs[0]["name"] == "colour.jpg" and refs[0]["status"] == "indexed"
    detail = api.client.get(f"/v1/jobs/{job['id']}", headers=api.a).json()
    assert detail["reference"]["source"] == "manual"
    assert detail["reference"]["reference_id"] == job["reference_id"]
    assert detail["reference"]["name"] == "colour.jpg"


def test_job_with_reference_id(api):
    ref = api.client.post("/v1/references", headers=api.a, files={"files": ("c.jpg", jpeg_bytes(), "image/jpeg")})
    ref_id = ref.json()["references"][0]["id"]
    job = post_job(api, png_bytes(), reference_id=ref_id).json()
    assert job["reference_mode"] == "manual" and job["reference_id"] == ref_id and job["status"] == "succeeded"


@pytest.mark.parametrize(
    "fields",
    [
        {"output_format": "gif"},
        {"reference_mode": "sideways"},
        {"reference_mode": "manual"},  # manual without a reference
        {"reference_id": "not-an-id"},
        {"reference_mode": "none", "reference_id": "00000000-0000-4000-8000-000000000000"},
        {"colour": "yes"},  # unknown field
    ],
)
def test_bad_options_are_422(api, fields):
    assert error_of(post_job(api, png_bytes(), **fields)) == (422, "validation_error")


def test_unknown_or_foreign_reference_id_is_422(api):
    foreign = api.client.post("/v1/references", headers=api.b, files={"files": ("c.jpg", jpeg_bytes(), "image/jpeg")})
    foreign_id = foreign.json()["references"][0]["id"]
    for ref_id in (foreign_id, "00000000-0000-4000-8000-000000000000"):
        assert error_of(post_job(api, png_bytes(), reference_id=ref_id)) == (422, "unknown_reference")


# --------------------------------------------------------------------------- refusals


def test_missing_or_bad_key_is_401(api):
    for headers in ({}, {"Authorization": "Bearer pk_000000000000_" + "x" * 43}, {"Authorization": "Basic abc"}):
        r = post_job(api, png_bytes(), headers=headers)
        assert error_of(r) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    assert error_of(api.client.get("/v1/batches")) == (401, "unauthorized")


def test_revoked_key_is_401(api):
    with session_scope(api.database_url) as s:
        key = next(k for k in repo.list_api_keys(s, api.tenant_a))
        repo.revoke_api_key(s, api.tenant_a, key.id)
    assert error_of(api.client.get("/v1/batches", headers=api.a)) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 422, "empty_file"),
        (b"hello, this is a text file\n" * 10, 415, "not_an_image"),
        (b"%PDF-1.7\n" + b"0" * 200, 415, "not_an_image"),
        (b"8BPS\x00\x01" + b"\x00" * 100, 415, "unsupported_format"),
        (png_bytes()[:-40], 422, "truncated_image"),
        (jpeg_bytes()[:300], 422, "truncated_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50 + b"\x00\x00\x00\x00IEND\xaeB`\x82", 422, "corrupt_image"),
        (big_png_bytes(1100, 1000), 422, "too_many_pixels"),
    ],
    ids=["empty", "text", "pdf", "psd", "png-cut", "jpeg-cut", "png-bad-header", "bomb"],
)
def test_bad_input_has_a_stable_code(api, data, status, code):
    assert MAX_PIXELS < 1100 * 1000
    r = post_job(api, data, name="photo.jpg")
    assert error_of(r) == (status, code)
    with session_scope(api.database_url) as s:  # nothing was queued
        assert sum(repo.jobs_by_status(s).values()) == 0


def test_file_over_the_upload_limit_is_413(api):
    data = png_bytes() + b"\x00" * MAX_UPLOAD
    assert error_of(post_job(api, data)) == (413, "file_too_large")


def test_malformed_requests_are_4xx(api):
    c = api.client
    # Not multipart at all.
    assert error_of(c.post("/v1/jobs", headers=api.a, json={"file": "x"})) == (415, "unsupported_media_type")
    # Multipart without the file field, or with the photo sent as a plain field.
    r = c.post("/v1/jobs", headers=api.a, files={"other": ("a.png", png_bytes(), "image/png")})
    assert error_of(r) == (422, "validation_error")
    r = c.post("/v1/jobs", headers=api.a, data={"file": "not a file"}, files={"x": ("", b"", "text/plain")})
    assert error_of(r)[0] == 422
    # Two photos where one is expected.
    r = c.post("/v1/jobs", headers=api.a, files=[("file", ("a.png", png_bytes(), "image/png")),
                                                  ("file", ("b.png", png_bytes(seed=2), "image/png"))])
    assert error_of(r) == (422, "validation_error")
    # A body cut off before its closing boundary.
    body = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png_bytes()
    r = c.post("/v1/jobs", headers={**api.a, "Content-Type": "multipart/form-data; boundary=XYZ"}, content=body)
    assert error_of(r) == (422, "validation_error")


# --------------------------------------------------------------------------- lookups, result, retry


def test_unknown_ids_are_404(api):
    for path in ("/v1/jobs/00000000-0000-4000-8000-000000000000", "/v1/jobs/nope", "/v1/jobs/%00/result"):
        assert error_of(api.client.get(path, headers=api.a)) == (404, "not_found")


def _queued_job(api) -> str:
    """A job committed but not yet sent (as when the broker is behind): created through the db layer."""
    with session_scope(api.database_url) as s:
        return repo.create_job(s, api.tenant_a, None, f"{api.tenant_a}/originals/x.png", None, "x.png", 1).id


def test_result_before_success_is_409(api):
    job_id = _queued_job(api)
    assert error_of(api.client.get(f"/v1/jobs/{job_id}/result", headers=api.a)) == (409, "job_not_finished")


def test_failed_job_reports_its_error_and_can_be_retried(api):
    r = post_job(api, corrupt_png(), name="damaged.png")
    assert r.status_code == 202  # the header is fine: the damage shows only when the worker decodes it
    job = r.json()
    assert job["status"] == "failed" and job["error"]["code"] == "corrupt_image"
    assert error_of(api.client.get(f"/v1/jobs/{job['id']}/result", headers=api.a)) == (409, "job_not_finished")

    retried = api.client.post(f"/v1/jobs/{job['id']}/retry", headers=api.a)
    assert retried.status_code == 202
    # Re-queued with a fresh attempt budget, and (eagerly) run again: the same bytes fail the same way.
    assert retried.json()["attempts"] == 1 and retried.json()["error"]["code"] == "corrupt_image"
    with session_scope(api.database_url) as s:
        transitions = [(e.from_status, e.to_status) for e in repo.job_events(s, job["id"])]
    assert transitions.count(("failed", "queued")) == 1


def test_only_failed_jobs_can_be_retried(api):
    done = post_job(api, png_bytes()).json()
    assert error_of(api.client.post(f"/v1/jobs/{done['id']}/retry", headers=api.a)) == (409, "job_not_retryable")
    queued = _queued_job(api)
    assert error_of(api.client.post(f"/v1/jobs/{queued}/retry", headers=api.a)) == (409, "job_not_retryable")
    missing = "00000000-0000-4000-8000-000000000000"
    assert error_of(api.client.post(f"/v1/jobs/{missing}/retry", headers=api.a)) == (404, "not_found")
