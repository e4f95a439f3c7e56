"""The error registry is the one source of error codes: docs/api.md's tables are generated from it, every
raise site names a registered code, and every registered code is answered, over the real API, with the
status the registry gives it.

Most codes are triggered over PostgreSQL and moto's S3; two need local storage (a result served from the
API's own folder, presigned uploads refused) and five a dependency that is down or silent. The few that no
request can provoke are listed in ``UNTRIGGERABLE`` with the reason.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import json
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    MAX_REQUEST,
    MAX_UPLOAD,
    big_png_bytes,
    jpeg_bytes,
    make_runtime,
    make_settings,
    png_bytes,
)
from fastapi.testclient import TestClient
from fixtures.processes import free_port
from pg_harness import postgres_s3_api
from PIL import Image

from api.errors import API_ERRORS, markdown_tables, status_of, with_tables
from db import repository as repo
from db.session import dispose_engine, session_scope

ROOT = Path(__file__).resolve().parents[2]
ID = "00000000-0000-4000-8000-000000000000"
# Well-formed but unknown: gets past the key's syntax check, so the database is asked.
SOME_KEY = "pk_0123456789ab_" + "A" * 43
ARCHIVE_LIMIT = 512 * 1024  # max_archive_uncompressed_bytes of the harness, so a small zip can exceed it

UNTRIGGERABLE = {
    "invalid_state": "answered when a row changes state between a route's check and its update; every route "
                     "locks or compare-and-sets, so only a race reaches it",
    "unsupported_mode": "an input code found when a worker decodes the pixels; uploads are checked from the "
                        "header (the job then fails with it)",
    "bad_reference": "an input code found when a worker loads the reference (the job then fails with it)",
    "image_too_small": "an input code the worker's pipeline raises (the job then fails with it)",
}


# --------------------------------------------------------------------------- docs and raise sites


def test_docs_api_md_tables_are_the_generated_ones():
    document = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert markdown_tables() in document
    assert with_tables(document) == document, "run: python -m api.errors --write docs/api.md"


def _codes_raised_in(path: Path) -> list[tuple[int, str, int | None]]:
    """(line, code, status given or None) of every ApiError/error_response/... call with a literal code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        literals = [a.value for a in node.args if isinstance(a, ast.Constant)]
        if name in ("ApiError", "error_response", "error_body", "send_error", "status_of"):
            if name == "send_error":
                literals = literals[:1]
            if len(literals) > 1 and isinstance(literals[0], int) and isinstance(literals[1], str):
                found.append((node.lineno, literals[1], literals[0]))
            elif literals and isinstance(literals[0], str):
                found.append((node.lineno, literals[0], None))
        elif name == "ErrorInfo":
            found += [(node.lineno, k.value.value, None) for k in node.keywords
                      if k.arg == "code" and isinstance(k.value, ast.Constant)]
    return found


def test_every_code_the_api_raises_is_registered_with_that_status():
    seen = 0
    problems = []
    for path in sorted((ROOT / "api").rglob("*.py")):
        for line, code, status in _codes_raised_in(path):
            seen += 1
            where = f"{path.relative_to(ROOT)}:{line}"
            if code not in API_ERRORS:
                problems.append(f"{where}: {code!r} is not registered in api.errors.API_ERRORS")
            elif status is not None and status != API_ERRORS[code].status:
                problems.append(f"{where}: {code!r} raised as {status}, registered as {API_ERRORS[code].status}")
    assert seen > 60
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- triggers


def _check(response, code: str) -> str | None:
    """None when ``response`` is ``code`` with its registered status, else what it was instead."""
    status, body = (response if isinstance(response, tuple) else (response.status_code, response.json()))
    got = (body.get("error") or {}).get("code")
    if (status, got) != (status_of(code), code):
        return f"{code}: expected {status_of(code)}, got {status} {got!r}: {str(body)[:300]}"
    return None


def _batch(api) -> str:
    return api.client.post("/v1/batches", headers=api.a, json={"name": "album"}).json()["id"]


def _upload(api, data: bytes, name: str = "a.png", url: str = "/v1/jobs", field: str = "file"):
    return api.client.post(url, headers=api.a, files=[(field, (name, data, "application/octet-stream"))])


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _submitted_batch(api) -> str:
    batch_id = _batch(api)
    _upload(api, png_bytes(), url=f"/v1/batches/{batch_id}/photos", field="files")
    assert api.client.post(f"/v1/batches/{batch_id}/submit", headers=api.a).status_code == 200
    return batch_id


def _queued_job(api) -> str:
    with session_scope(api.database_url) as s:
        return repo.create_job(s, api.tenant_a, None, f"{api.tenant_a}/originals/x.png", None, "x.png", 10).id


def _succeeded_job(api) -> dict:
    job = _upload(api, png_bytes()).json()
    assert job["status"] == "succeeded", job
    return job


def _idempotency_key_reused(api):
    headers = {**api.a, "Idempotency-Key": "reused-key"}
    api.client.post("/v1/batches", headers=headers, json={"name": "first"})
    return api.client.post("/v1/batches", headers=headers, json={"name": "second"})


def _digest_mismatch(api):
    wrong = "sha-256=:" + base64.b64encode(bytes(32)).decode() + ":"
    return api.client.post("/v1/jobs", headers={**api.a, "Content-Digest": wrong},
                           files={"file": ("a.png", png_bytes(), "image/png")})


def _still_running(api):
    job_id = _queued_job(api)
    with session_scope(api.database_url) as s:
        repo.claim_job(s, job_id, "w1", max_attempts=3)
    return api.client.post(f"/v1/jobs/{job_id}/resend", headers=api.a)


def _internal_error(api):
    def broken() -> None:
        raise RuntimeError("a bug")

    api.app.add_api_route("/v1/test-only/broken", broken)
    with TestClient(api.app, raise_server_exceptions=False) as client:
        return client.get("/v1/test-only/broken", headers=api.a)


def _disconnect_mid_upload(api) -> tuple[int, dict]:
    """The client goes away half-way through a body; the app's own answer is read at the ASGI level (over
    HTTP nobody is left to read it)."""
    batch_id = _batch(api)
    messages: list[dict] = []
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n\x89PNG\r\n'
            return {"type": "http.request", "body": part, "more_body": True}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    path = f"/v1/batches/{batch_id}/photos"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {api.key_a}".encode()),
                    (b"content-type", b"multipart/form-data; boundary=b")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }
    asyncio.run(api.app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def _noise_png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=0)
    return out.getvalue()


PG_TRIGGERS: dict[str, Callable] = {
    "client_disconnected": _disconnect_mid_upload,
    "unauthorized": lambda api: api.client.get("/v1/batches"),
    "not_found": lambda api: api.client.get(f"/v1/batches/{ID}", headers=api.a),
    "report_not_ready": lambda api: api.client.get(f"/v1/batches/{_batch(api)}/report", headers=api.a),
    "method_not_allowed": lambda api: api.client.put("/v1/batches", headers=api.a),
    "batch_not_open": lambda api: _upload(api, png_bytes(), url=f"/v1/batches/{_submitted_batch(api)}/photos",
                                          field="files"),
    "batch_finished": lambda api: api.client.post(f"/v1/batches/{_submitted_batch(api)}/cancel", headers=api.a),
    "job_not_finished": lambda api: api.client.get(f"/v1/jobs/{_queued_job(api)}/result", headers=api.a),
    "job_not_retryable": lambda api: api.client.post(f"/v1/jobs/{_succeeded_job(api)['id']}/retry", headers=api.a),
    "job_not_resendable": lambda api: api.client.post(f"/v1/jobs/{_succeeded_job(api)['id']}/resend",
                                                      headers=api.a),
    "job_still_running": _still_running,
    "job_not_cancellable": lambda api: api.client.post(f"/v1/jobs/{_succeeded_job(api)['id']}/cancel",
                                                       headers=api.a),
    "job_not_awaiting_review": lambda api: api.client.post(f"/v1/jobs/{_succeeded_job(api)['id']}/review",
                                                           headers=api.a, json={"decision": "approve"}),
    "digest_mismatch": _digest_mismatch,
    "idempotency_key_reused": _idempotency_key_reused,
    "file_too_large": lambda api: _upload(api, bytes(MAX_UPLOAD + 1)),
    "request_too_large": lambda api: api.client.post("/v1/jobs", headers={**api.a, "Content-Type": "text/plain"},
                                                     content=bytes(MAX_REQUEST + 1)),
    "archive_too_large": lambda api: _upload(api, _zip({"big.png": _noise_png(400, 500)}, zipfile.ZIP_STORED),
                                             "a.zip", f"/v1/batches/{_batch(api)}/archive"),
    "archive_too_many_members": lambda api: _upload(api, _zip({f"{i}.png": b"x" for i in range(51)}), "a.zip",
                                                    f"/v1/batches/{_batch(api)}/archive"),
    "unsupported_media_type": lambda api: api.client.post(f"/v1/batches/{_batch(api)}/photos", headers=api.a,
                                                          json={"files": []}),
    "not_an_archive": lambda api: _upload(api, png_bytes(), "a.zip", f"/v1/batches/{_batch(api)}/archive"),
    "not_an_image": lambda api: _upload(api, b"<html>not a photo</html>"),
    "unsupported_format": lambda api: _upload(api, b"8BPS" + bytes(60), "a.psd"),
    "empty_file": lambda api: _upload(api, b""),
    "truncated_image": lambda api: _upload(api, png_bytes()[: len(png_bytes()) // 2]),
    "too_many_pixels": lambda api: _upload(api, big_png_bytes(1100, 1000)),
    "corrupt_image": lambda api: _upload(api, b"\x89PNG\r\n\x1a\n" + bytes(60) + b"\x00\x00\x00\x00IEND\xaeB`\x82"),
    "validation_error": lambda api: api.client.post("/v1/batches", headers=api.a, json={}),
    "invalid_cursor": lambda api: api.client.get("/v1/batches", headers=api.a, params={"cursor": "nonsense"}),
    "unknown_reference": lambda api: api.client.post("/v1/batches", headers=api.a, json={
        "name": "x", "options": {"reference_mode": "manual", "reference_id": ID}}),
    "reference_not_colour": lambda api: _upload(api, png_bytes(mode="L"), "grey.png", "/v1/references", "files"),
    "webhook_url_not_allowed": lambda api: api.client.post("/v1/batches", headers=api.a, json={
        "name": "x", "webhook_url": "http://localhost:6379/"}),
    "upload_missing": lambda api: api.client.post(f"/v1/batches/{_batch(api)}/submit", headers=api.a,
                                                  json={"files": ["never-uploaded.png"]}),
    "batch_empty": lambda api: api.client.post(f"/v1/batches/{_batch(api)}/submit", headers=api.a),
    "archive_empty": lambda api: _upload(api, _zip({"notes.txt": b"no photos here"}), "a.zip",
                                         f"/v1/batches/{_batch(api)}/archive"),
    "bad_archive": lambda api: _upload(api, b"PK\x03\x04" + bytes(200), "a.zip", f"/v1/batches/{_batch(api)}/archive"),
    "zip_bomb": lambda api: _upload(api, _zip({"a.png": bytes(256 * 1024)}), "a.zip",
                                    f"/v1/batches/{_batch(api)}/archive"),
    "internal_error": _internal_error,
}


def _result_missing(api):
    job = _succeeded_job(api)
    with session_scope(api.database_url) as s:
        api.store.delete(repo.get_job(s, api.tenant_a, job["id"]).output_key)
    return api.client.get(job["result_url"], headers=api.a)


LOCAL_TRIGGERS: dict[str, Callable] = {
    "result_missing": _result_missing,
    "presigned_unavailable": lambda api: api.client.post(f"/v1/batches/{_batch(api)}/uploads", headers=api.a,
                                                         json={"files": ["a.png"]}),
}


@contextmanager
def _silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung dependency."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@contextmanager
def _plain_app(tmp_path, shared_models, **overrides) -> Iterator[TestClient]:
    from api.app import create_app

    settings = make_settings(tmp_path, shared_models.checkpoint, **overrides)
    app = create_app(settings, runtime=make_runtime(settings, shared_models))
    try:
        with TestClient(app) as client:
            yield client
    finally:
        dispose_engine(settings.resolved_database_url)


def _broker_unavailable(tmp_path, shared_models, postgres_url, s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket,
                         broker_url=f"redis://127.0.0.1:{free_port()}/0") as api:
        return _upload(api, jpeg_bytes())


def _storage_unavailable(tmp_path, shared_models, postgres_url, s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket,
                         s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_max_attempts=1) as api:
        return _upload(api, jpeg_bytes())


def _database_unavailable(tmp_path, shared_models, postgres_url, s3_bucket):
    dead = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    with _plain_app(tmp_path, shared_models, database_url=dead) as client:
        return client.get("/v1/batches", headers={"Authorization": f"Bearer {SOME_KEY}"})


def _not_ready(tmp_path, shared_models, postgres_url, s3_bucket):
    dead = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    with _plain_app(tmp_path, shared_models, database_url=dead) as client:
        return client.get("/readyz")


def _dependency_timeout(tmp_path, shared_models, postgres_url, s3_bucket):
    with _silent_port() as port:
        # connect_timeout frees the abandoned handler's thread soon after the answer.
        silent = f"postgresql+psycopg://nobody@127.0.0.1:{port}/none?connect_timeout=3"
        with _plain_app(tmp_path, shared_models, database_url=silent, api_read_timeout_s=1.0) as client:
            start = time.monotonic()
            response = client.get("/v1/batches", headers={"Authorization": f"Bearer {SOME_KEY}"})
            assert time.monotonic() - start < 3
            return response


OUTAGE_TRIGGERS: dict[str, Callable] = {
    "broker_unavailable": _broker_unavailable,
    "storage_unavailable": _storage_unavailable,
    "database_unavailable": _database_unavailable,
    "not_ready": _not_ready,
    "dependency_timeout": _dependency_timeout,
}


def test_every_registered_code_has_a_trigger_or_a_reason():
    triggered = {*PG_TRIGGERS, *LOCAL_TRIGGERS, *OUTAGE_TRIGGERS}
    assert not triggered & set(UNTRIGGERABLE)
    assert triggered | set(UNTRIGGERABLE) == set(API_ERRORS)


@pytest.fixture
def pg_api(tmp_path, shared_models, postgres_url, s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket,
                         max_archive_uncompressed_bytes=ARCHIVE_LIMIT) as harness:
        yield harness


def test_codes_answered_over_postgres_and_s3(pg_api):
    problems = [p for code, trigger in PG_TRIGGERS.items() if (p := _check(trigger(pg_api), code))]
    assert not problems, "\n".join(problems)


def test_codes_answered_with_local_storage(api):
    problems = [p for code, trigger in LOCAL_TRIGGERS.items() if (p := _check(trigger(api), code))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("code", sorted(OUTAGE_TRIGGERS))
def test_codes_answered_when_a_dependency_fails(code, tmp_path, shared_models, postgres_url, s3_bucket):
    problem = _check(OUTAGE_TRIGGERS[code](tmp_path, shared_models, postgres_url, s3_bucket), code)
    assert problem is None, problem
