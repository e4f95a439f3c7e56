"""Batches over HTTP, in-process: create, list and page, upload (multipart, zip), submit, cancel, report."""

from __future__ import annotations

import json

import pytest
from conftest import MAX_REQUEST, MAX_UPLOAD, jpeg_bytes, png_bytes, zip_bytes
from pg_harness import postgres_s3_api

from db import repository as repo
from db.session import session_scope


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"]


def new_batch(api, headers=None, **body) -> dict:
    r = api.client.post("/v1/batches", headers=headers or api.a, json={"name": "album", **body})
    assert r.status_code == 201, r.text
    return r.json()


def photos(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def queued_jobs(api, batch_id: str, n: int, tenant: str | None = None) -> list[str]:
    """Jobs committed but not yet sent: created through the db layer (no task runs)."""
    tenant = tenant or api.tenant_a
    with session_scope(api.database_url) as s:
        return [
            repo.create_job(s, tenant, batch_id, f"{tenant}/originals/{i}.png", None, f"{i}.png", 10).id
            for i in range(n)
        ]


# --------------------------------------------------------------------------- create, read, list


def test_create_batch_defaults_and_validation(api):
    batch = new_batch(api)
    assert batch["status"] == "open" and batch["total_jobs"] == 0
    assert batch["options"]["reference_mode"] == "auto" and batch["options"]["output_format"] == "png"
    assert batch["progress"]["total"] == 0 and batch["progress"]["eta_s"] == 0.0
    assert batch["report_url"] is None

    bad = [
        {"name": ""},
        {"name": "x", "options": {"output_format": "bmp"}},
        {"name": "x", "options": {"reference_mode": "manual"}},
        {"name": "x", "options": {"reference_mode": "auto", "reference_id": "00000000-0000-4000-8000-000000000000"}},
        {"name": "x", "options": {"colour": True}},
        {"name": "x", "webhook_url": "ftp://example.org/hook"},
        {"name": "x", "surprise": 1},
    ]
    for body in bad:
        assert error_of(api.client.post("/v1/batches", headers=api.a, json=body)) == (422, "validation_error"), body
    missing_ref = {"name": "x", "options": {"reference_mode": "manual",
                                          "reference_id": "00000000-0000-4000-8000-000000000000"}}
    assert error_of(api.client.post("/v1/batches", headers=api.a, json=missing_ref)) == (422, "unknown_reference")
    assert error_of(api.client.post("/v1/batches", headers=api.a, content=b"{not json")) == (422, "validation_error")


def test_webhook_urls_must_point_at_public_addresses(api):
    for url in ("http://169.254.169.254/latest/meta-data/", "http://localhost:6379/", "http://[::1]/hook",
                "https://user:pw@hooks.example.org/x"):
        response = api.client.post("/v1/batches", headers=api.a, json={"name": "x", "webhook_url": url})
        assert error_of(response) == (422, "webhook_url_not_allowed"), url
        assert response.json()["error"]["message"]
    public = new_batch(api, webhook_url="https://hooks.bureau.example/pikfix")
    assert public["webhook_url"] == "https://hooks.bureau.example/pikfix"


def test_list_batches_pages_newest_first(api):
    created = [new_batch(api, name=f"album {i}")["id"] for i in range(5)]
    new_batch(api, headers=api.b)  # another tenant's batch never shows up
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/batches", headers=api.a, params=params).json()
        assert len(page["items"]) <= 2
        seen += [b["id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created[::-1]
    assert error_of(api.client.get("/v1/batches", headers=api.a, params={"cursor": "garbage"})) == (422, "invalid_cursor")
    assert error_of(api.client.get("/v1/batches", headers=api.a, params={"limit": 0})) == (422, "validation_error")


def test_batch_jobs_cursor_pagination_and_status_filter(api):
    batch = new_batch(api)
    ids = queued_jobs(api, batch["id"], 7)
    with session_scope(api.database_url) as s:
        repo.fail_job(s, ids[3], None, "corrupt_image", "damaged")
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.client.get(f"/v1/batches/{batch['id']}/jobs", headers=api.a, params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids  # creation order, each exactly once
    failed = api.client.get(f"/v1/batches/{batch['id']}/jobs", headers=api.a, params={"status": "failed"}).json()
    assert [j["id"] for j in failed["items"]] == [ids[3]] and failed["items"][0]["error"]["code"] == "corrupt_image"
    r = api.client.get(f"/v1/batches/{batch['id']}/jobs", headers=api.a, params={"status": "lost"})
    assert error_of(r) == (422, "validation_error")

    progress = api.client.get(f"/v1/batches/{batch['id']}", headers=api.a).json()["progress"]
    assert progress["counts"]["queued"] == 6 and progress["counts"]["failed"] == 1
    assert progress["total"] == 7 and progress["done"] == 1
    assert progress["done_fraction"] == pytest.approx(1 / 7)


# --------------------------------------------------------------------------- multipart photos


def test_photos_become_jobs_and_bad_files_are_listed(api):
    batch = new_batch(api, options={"output_format": "tiff16", "reference_mode": "none"})
    r = api.client.post(
        f"/v1/batches/{batch['id']}/photos",
        headers=api.a,
        files=photos(("a.png", png_bytes(seed=1)), ("sub/b.jpg", jpeg_bytes()), ("notes.txt", b"not a photo"),
                     ("empty.png", b"")),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert [j["input_name"] for j in body["jobs"]] == ["a.png", "b.jpg"]
    assert all(j["batch_id"] == batch["id"] and j["output_format"] == "tiff16" for j in body["jobs"])
    assert all(j["status"] == "succeeded" for j in body["jobs"])  # eager mode
    assert {(x["name"], x["code"]) for x in body["rejected"]} == {("notes.txt", "not_an_image"),
                                                                   ("empty.png", "empty_file")}
    page = api.client.get(f"/v1/batches/{batch['id']}", headers=api.a).json()
    assert page["status"] == "open" and page["progress"]["counts"]["succeeded"] == 2


def test_photos_all_refused_answers_the_first_error(api):
    batch = new_batch(api)
    r = api.client.post(f"/v1/batches/{batch['id']}/photos", headers=api.a,
                        files=photos(("a.txt", b"text"), ("b.txt", b"more text")))
    assert error_of(r) == (415, "not_an_image")
    assert [d["name"] for d in r.json()["error"]["details"]] == ["a.txt", "b.txt"]
    r = api.client.post(f"/v1/batches/{batch['id']}/photos", headers=api.a, files=photos())
    assert error_of(r)[0] in (415, 422)


def test_request_size_limits(api):
    batch = new_batch(api)
    url = f"/v1/batches/{batch['id']}/photos"
    big = png_bytes() + b"\x00" * (MAX_UPLOAD + 1)
    assert error_of(api.client.post(url, headers=api.a, files=photos(("big.png", big)))) == (413, "file_too_large")
    # Many files, each under the file limit, together over the request limit (declared Content-Length).
    n = MAX_REQUEST // (MAX_UPLOAD // 2) + 2
    parts = photos(*[(f"p{i}.png", png_bytes() + b"\x00" * (MAX_UPLOAD // 2)) for i in range(n)])
    assert error_of(api.client.post(url, headers=api.a, files=parts)) == (413, "request_too_large")

    # The same without a Content-Length (chunked): refused while streaming.
    def chunks():
        yield b'--B\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n'
        for _ in range(MAX_REQUEST // 65536 + 2):
            yield b"\x00" * 65536

    headers = {**api.a, "Content-Type": "multipart/form-data; boundary=B"}
    r = api.client.post(url, headers=headers, content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] in ("file_too_large", "request_too_large")

    def json_chunks():  # a JSON body streamed past the request limit
        yield b'{"name": "'
        for _ in range(MAX_REQUEST // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    r = api.client.post("/v1/batches", headers={**api.a, "Content-Type": "application/json"}, content=json_chunks())
    assert error_of(r) == (413, "request_too_large")
    with session_scope(api.database_url) as s:
        assert sum(repo.jobs_by_status(s).values()) == 0


# --------------------------------------------------------------------------- archive


def test_archives_and_photos_share_a_batch_until_the_client_submits(api):
    batch = new_batch(api, options={"reference_mode": "none"})
    archive = zip_bytes({
        "scans/one.png": png_bytes(seed=3),
        "scans/two.jpg": jpeg_bytes(),
        "readme.txt": b"hello",
        "../escape.png": png_bytes(seed=4),
    })
    r = api.client.post(f"/v1/batches/{batch['id']}/archive", headers=api.a,
                        files={"file": ("album.zip", archive, "application/zip")})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["archive"]["name"] == "album.zip" and body["archive"]["members"] == 4
    assert body["archive"]["bytes"] == len(archive)
    assert body["batch"]["status"] == "open"  # unpacking never submits: the client does
    # A second archive and loose photos still go into the same batch.
    second = zip_bytes({"more/three.png": png_bytes(seed=5)})
    r = api.client.post(f"/v1/batches/{batch['id']}/archive", headers=api.a,
                        files={"file": ("more.zip", second, "application/zip")})
    assert r.status_code == 202, r.text
    r = api.client.post(f"/v1/batches/{batch['id']}/photos", headers=api.a, files=photos(("four.png", png_bytes())))
    assert r.status_code == 201, r.text
    archives = api.client.get(f"/v1/batches/{batch['id']}/archives", headers=api.a).json()["items"]
    assert [(a["name"], a["status"], a["created_jobs"], a["refused_members"]) for a in archives] == [
        ("album.zip", "ingested", 2, 2), ("more.zip", "ingested", 1, 0)]

    submitted = api.client.post(f"/v1/batches/{batch['id']}/submit", headers=api.a)
    assert submitted.status_code == 200, submitted.text
    after = api.client.get(f"/v1/batches/{batch['id']}", headers=api.a).json()
    assert after["status"] == "finished" and after["total_jobs"] == 6 and after["pending_archives"] == 0
    assert {k: v for k, v in after["progress"]["counts"].items() if v} == {"succeeded": 4, "failed": 2}
    jobs = api.client.get(f"/v1/batches/{batch['id']}/jobs", headers=api.a, params={"status": "succeeded"}).json()
    # Members outside the archive's root ("../escape.png") and non-images are refused, with a reason.
    assert sorted(j["input_name"].rsplit("/", 1)[-1] for j in jobs["items"]) == [
        "four.png", "one.png", "three.png", "two.jpg"]
    refused = api.client.get(f"/v1/batches/{batch['id']}/jobs", headers=api.a, params={"status": "failed"}).json()
    assert {j["input_name"]: j["error"]["code"] for j in refused["items"]} == {
        "readme.txt": "skipped_member", "../escape.png": "skipped_member"}

    report = api.client.get(after["report_url"], headers=api.a)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "one.png" in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]
    # A finished batch takes no more photos or archives.
    r = api.client.post(f"/v1/batches/{batch['id']}/photos", headers=api.a, files=photos(("c.png", png_bytes())))
    assert error_of(r) == (409, "batch_not_open")
    r = api.client.post(f"/v1/batches/{batch['id']}/archive", headers=api.a,
                        files={"file": ("late.zip", second, "application/zip")})
    assert error_of(r) == (409, "batch_not_open")


@pytest.mark.parametrize(
    ("archive", "status", "code"),
    [
        (png_bytes(), 415, "not_an_archive"),
        (b"PK\x03\x04" + b"\x00" * 100, 422, "bad_archive"),
        (zip_bytes({f"p{i}.png": b"x" for i in range(51)}), 413, "archive_too_many_members"),
        (zip_bytes({"zeros.png": b"\x00" * 400_000}), 422, "zip_bomb"),
        (b"", 422, "empty_file"),
        (zip_bytes({}), 422, "archive_empty"),
        (zip_bytes({"notes.txt": b"no photos here"}), 422, "archive_empty"),
    ],
    ids=["png", "broken-zip", "too-many", "bomb", "empty", "no-members", "no-photos"],
)
def test_bad_archives_are_refused_before_storing(api, archive, status, code):
    batch = new_batch(api)
    r = api.client.post(f"/v1/batches/{batch['id']}/archive", headers=api.a,
                        files={"file": ("a.zip", archive, "application/zip")})
    assert error_of(r) == (status, code)
    assert api.store.list_keys(f"{api.tenant_a}/archives/") == []


# --------------------------------------------------------------------------- presigned uploads and submit


def test_presigned_uploads_need_s3(api):
    batch = new_batch(api)
    r = api.client.post(f"/v1/batches/{batch['id']}/uploads", headers=api.a, json={"files": ["a.png"]})
    assert error_of(r) == (409, "presigned_unavailable")
    r = api.client.post(f"/v1/batches/{batch['id']}/uploads", headers=api.a, json={"files": []})
    assert error_of(r) == (422, "validation_error")


def test_submit_rules(api):
    batch = new_batch(api)
    url = f"/v1/batches/{batch['id']}"
    assert error_of(api.client.post(f"{url}/submit", headers=api.a)) == (422, "batch_empty")
    r = api.client.post(f"{url}/submit", headers=api.a, json={"files": ["never-uploaded.png"]})
    assert error_of(r) == (422, "upload_missing")

    api.client.post(f"{url}/photos", headers=api.a, files=photos(("a.png", png_bytes())))
    r = api.client.post(f"{url}/submit", headers=api.a)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["registered"] == 0 and body["batch"]["total_jobs"] == 1
    assert body["batch"]["status"] == "finished"  # eager: its only job is done, so it finishes at once
    assert error_of(api.client.post(f"{url}/submit", headers=api.a)) == (409, "batch_not_open")


# --------------------------------------------------------------------------- cancel and report


def test_cancel_rules(api):
    batch = new_batch(api)
    url = f"/v1/batches/{batch['id']}"
    ids = queued_jobs(api, batch["id"], 3)
    with session_scope(api.database_url) as s:  # one already running: it is left to finish
        repo.claim_job(s, ids[0], "w1", max_attempts=3)
    assert error_of(api.client.get(f"{url}/report", headers=api.a)) == (404, "report_not_ready")

    r = api.client.post(f"{url}/cancel", headers=api.a)
    assert r.status_code == 200
    assert r.json()["cancelled_jobs"] == 2 and r.json()["batch"]["status"] == "cancelled"
    counts = r.json()["batch"]["progress"]["counts"]
    assert counts["cancelled"] == 2 and counts["running"] == 1
    again = api.client.post(f"{url}/cancel", headers=api.a)
    assert again.status_code == 200 and again.json()["cancelled_jobs"] == 0  # idempotent
    r = api.client.post(f"{url}/photos", headers=api.a, files=photos(("a.png", png_bytes())))
    assert error_of(r) == (409, "batch_not_open")

    finished = new_batch(api)
    api.client.post(f"/v1/batches/{finished['id']}/photos", headers=api.a, files=photos(("a.png", png_bytes())))
    assert api.client.post(f"/v1/batches/{finished['id']}/submit", headers=api.a).json()["batch"]["status"] == "finished"
    assert error_of(api.client.post(f"/v1/batches/{finished['id']}/cancel", headers=api.a)) == (409, "batch_finished")


@pytest.fixture
def pg_api(tmp_path, shared_models, postgres_url, s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket) as harness:
        yield harness


def _run_finish_batches() -> list[str]:
    """The beat's maintenance task, run here (the API's runtime is the eager one)."""
    from workers.maintenance import finish_batches

    return finish_batches.apply().get()


def test_a_cancelled_batch_gets_its_report_once_nothing_runs(pg_api):
    """The report is written when the jobs still running at the cancel have ended, and shows what each
    photo became: finished before, finished while cancelling, or cancelled unprocessed."""
    api = pg_api
    batch = new_batch(api)
    url = f"/v1/batches/{batch['id']}"
    r = api.client.post(f"{url}/photos", headers=api.a, files=photos(("done.png", png_bytes())))
    assert r.json()["jobs"][0]["status"] == "succeeded"
    ids = queued_jobs(api, batch["id"], 3)
    with session_scope(api.database_url) as s:
        attempt = repo.claim_job(s, ids[0], "w1", max_attempts=3).attempt

    r = api.client.post(f"{url}/cancel", headers=api.a)
    assert r.status_code == 200 and r.json()["cancelled_jobs"] == 2
    cancelled = r.json()["batch"]
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is None and cancelled["report_url"] is None
    assert _run_finish_batches() == []  # one job still runs: its outcome belongs in the report
    r = api.client.get(f"{url}/report", headers=api.a)
    assert error_of(r) == (404, "report_not_ready") and "running jobs" in r.json()["error"]["message"]

    with session_scope(api.database_url) as s:
        assert repo.complete_job(s, ids[0], attempt, f"{api.tenant_a}/results/{ids[0]}.png")
    assert _run_finish_batches() == [batch["id"]]
    assert _run_finish_batches() == []  # once

    settled = api.client.get(url, headers=api.a).json()
    assert settled["status"] == "cancelled" and settled["finished_at"] and settled["report_url"] == f"{url}/report"
    r = api.client.get(settled["report_url"], headers=api.a)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "This batch was cancelled: 2 photos were never processed; 2 succeeded, 0 failed" in r.text
    assert "done.png" in r.text
    report_json = api.store.get_bytes(f"{api.tenant_a}/reports/{batch['id']}/report.json")
    counts = json.loads(report_json)["summary"]["counts"]
    assert counts == {"queued": 0, "running": 0, "succeeded": 2, "failed": 0, "cancelled": 2, "awaiting_review": 0}


def test_a_cancelled_batch_with_nothing_running_has_its_report_at_once(pg_api):
    api = pg_api
    batch = new_batch(api)
    queued_jobs(api, batch["id"], 2)
    r = api.client.post(f"/v1/batches/{batch['id']}/cancel", headers=api.a)
    assert r.json()["batch"]["finished_at"] and r.json()["batch"]["report_url"]
    report = api.client.get(r.json()["batch"]["report_url"], headers=api.a)
    assert report.status_code == 200 and "2 photos were never processed" in report.text


def test_unknown_batch_is_404_everywhere(api):
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in [("get", ""), ("get", "/jobs"), ("post", "/cancel"), ("get", "/report"), ("post", "/submit")]:
        r = getattr(api.client, method)(f"/v1/batches/{missing}{path}", headers=api.a)
        assert error_of(r) == (404, "not_found"), path
    r = api.client.post(f"/v1/batches/{missing}/photos", headers=api.a, files=photos(("a.png", png_bytes())))
    assert error_of(r) == (404, "not_found")
