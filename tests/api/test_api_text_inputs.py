"""Text the database cannot store (the NUL character, lone UTF-16 surrogates) is refused as bad input.

PostgreSQL's text types refuse NUL, and a lone surrogate has no UTF-8 encoding; either used to reach an
INSERT and answer 500. Every text input is covered, over PostgreSQL and S3: each string of each JSON body
(found from the OpenAPI spec, so a new field is covered without editing this file), every query parameter,
every path parameter, multipart form fields and file names, and pagination cursors.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from conftest import png_bytes
from pg_harness import postgres_s3_api

from db import repository as repo
from db.session import session_scope

NUL_TEXT = "ab\x00cd"
ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def pg_api(tmp_path, shared_models, postgres_url, s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket) as harness:
        yield harness


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"]


def _spec(api) -> dict:
    return api.client.get("/openapi.json").json()


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _string_paths(spec: dict, schema: dict, path: tuple = ()) -> list[tuple]:
    """Paths of the string fields a JSON body of ``schema`` can hold (array items as index 0)."""
    schema = _resolve(spec, schema)
    found: list[tuple] = []
    for variant in schema.get("anyOf", []) + schema.get("oneOf", []):
        found += _string_paths(spec, variant, path)
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and "const" not in schema:
        found.append(path)
    elif kind == "object":
        for name, sub in schema.get("properties", {}).items():
            found += _string_paths(spec, sub, (*path, name))
    elif kind == "array":
        found += _string_paths(spec, schema.get("items", {}), (*path, 0))
    return sorted(set(found), key=str)


def _set(body: dict, path: tuple, value: str) -> dict:
    body = json.loads(json.dumps(body))
    node = body
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value
    return body


def _json_operations(spec: dict) -> dict[tuple[str, str], dict]:
    ops = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                ops[(method, path)] = content["application/json"]["schema"]
    return ops


def test_every_string_of_every_json_body_refuses_nul(pg_api):
    api = pg_api
    batch_id = api.client.post("/v1/batches", headers=api.a, json={"name": "album"}).json()["id"]
    with session_scope(api.database_url) as s:
        ref_id = repo.add_reference(s, api.tenant_a, "ref.jpg", f"{api.tenant_a}/references/r.jpg", "0" * 64).id
    # A valid body per JSON route, and the status it gets as sent: the NUL alone must turn it into a 422.
    valid = {
        ("post", "/v1/batches"): (
            {"name": "album", "webhook_url": "https://hooks.example.org/pikfix",
             "options": {"reference_mode": "manual", "reference_id": ref_id, "output_format": "png"}},
            201,
        ),
        ("post", "/v1/batches/{batch_id}/uploads"): ({"files": ["scan.png"]}, 200),
        ("post", "/v1/batches/{batch_id}/submit"): ({"files": ["scan.png"]}, None),  # checked below
        ("post", "/v1/batches/{batch_id}/multipart"): ({"name": "scan.png", "size": 6 * 1024 * 1024}, None),
        ("post", "/v1/batches/{batch_id}/multipart/complete"): (
            {"name": "scan.png", "upload_id": "u", "parts": [{"part_number": 1, "etag": "e"}]}, None),
        ("post", "/v1/jobs/{job_id}/review"): ({"decision": "approve", "note": "ok", "reference_id": ref_id}, None),
    }
    spec = _spec(api)
    operations = _json_operations(spec)
    assert set(operations) == set(valid), "a JSON route was added: give it a valid body here"
    tried = 0
    for (method, path), schema in operations.items():
        url = path.replace("{batch_id}", batch_id).replace("{job_id}", ID)
        body, ok_status = valid[(method, path)]
        fields = _string_paths(spec, schema)
        assert fields, (method, path)
        for field in fields:
            r = api.client.request(method.upper(), url, headers=api.a, json=_set(body, field, NUL_TEXT))
            assert error_of(r) == (422, "validation_error"), (path, field, r.text)
            assert "NUL" in r.json()["error"]["message"] or field[-1] in ("reference_id", "decision"), r.text
            tried += 1
        if ok_status is not None:  # the same body without the NUL is accepted
            r = api.client.request(method.upper(), url, headers=api.a, json=body)
            assert r.status_code == ok_status, r.text
    assert tried >= 5  # name, webhook_url, reference_id, two file name lists
    # Submit's body is valid; only its (absent) upload is refused, with its own code.
    r = api.client.post(f"/v1/batches/{batch_id}/submit", headers=api.a, json={"files": ["scan.png"]})
    assert error_of(r) == (422, "upload_missing")


def test_lone_surrogates_in_json_are_refused(pg_api):
    api = pg_api
    raw = b'{"name": "album \\ud800"}'  # valid JSON text; not encodable as UTF-8
    r = api.client.post("/v1/batches", headers={**api.a, "Content-Type": "application/json"}, content=raw)
    assert error_of(r) == (422, "validation_error")


PATH_TEST_BODIES = {
    "/uploads": {"files": ["a.png"]},
    "/multipart": {"name": "a.png", "size": 6 * 1024 * 1024},
    "/multipart/complete": {"name": "a.png", "upload_id": "u", "parts": [{"part_number": 1, "etag": "e"}]},
    "/review": {"decision": "approve"},
}


def test_every_query_and_path_parameter_refuses_nul(pg_api):
    api = pg_api
    batch_id = api.client.post("/v1/batches", headers=api.a, json={"name": "album"}).json()["id"]
    spec = _spec(api)
    checked_query = checked_path = 0
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            concrete = path.replace("{batch_id}", batch_id)
            for param in params:
                if param["in"] == "query":
                    filled = concrete
                    for other in params:  # the other path parameters valid, so only the query is at fault
                        if other["in"] == "path":
                            filled = filled.replace("{" + other["name"] + "}", ID)
                    r = api.client.request(method.upper(), filled, headers=api.a,
                                           params={param["name"]: NUL_TEXT})
                    assert error_of(r) == (422, "validation_error"), (method, path, param["name"], r.text)
                    checked_query += 1
                elif param["in"] == "path":
                    # An id holding a NUL names nothing: 404, like any id that does not exist.
                    url = path.replace("{" + param["name"] + "}", "abc%00def")  # decoded to a NUL
                    for other in params:
                        url = url.replace("{" + other["name"] + "}", "original" if other["name"] == "which" else ID)
                    body = PATH_TEST_BODIES.get(path.rsplit("}", 1)[-1])  # a body it takes
                    r = api.client.request(method.upper(), url, headers=api.a, json=body)
                    # A closed set of words (an enum) refuses it as invalid rather than unknown.
                    expected = (422, "validation_error") if "enum" in param["schema"] else (404, "not_found")
                    assert error_of(r) == expected, (method, path, r.text)
                    checked_path += 1
    assert checked_query >= 5 and checked_path >= 15


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"pikfixboundary") -> tuple[bytes, dict]:
    """A multipart body built by hand: clients percent-encode odd file names, a hostile one does not."""
    body = b""
    for disposition, data in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + data + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


def test_multipart_file_names_and_fields_refuse_nul(pg_api):
    api = pg_api
    batch_id = api.client.post("/v1/batches", headers=api.a, json={"name": "album"}).json()["id"]
    photo = png_bytes()
    uploads = {
        "/v1/jobs": b"file",
        f"/v1/batches/{batch_id}/photos": b"files",
        f"/v1/batches/{batch_id}/archive": b"file",
        "/v1/references": b"files",
    }
    for url, field in uploads.items():
        body, headers = _multipart([(b'name="' + field + b'"; filename="scan\x00.png"', photo)])
        r = api.client.post(url, headers={**api.a, **headers}, content=body)
        assert error_of(r) == (422, "validation_error"), (url, r.text)
        assert "NUL" in r.json()["error"]["message"]
        body, headers = _multipart([(b'name="fi\x00le"; filename="scan.png"', photo)])
        r = api.client.post(url, headers={**api.a, **headers}, content=body)
        assert error_of(r) == (422, "validation_error"), (url, r.text)
    body, headers = _multipart([(b'name="file"; filename="scan.png"', photo),
                                (b'name="output_format"', b"png\x00")])
    r = api.client.post("/v1/jobs", headers={**api.a, **headers}, content=body)
    assert error_of(r) == (422, "validation_error") and "NUL" in r.json()["error"]["message"]
    with session_scope(api.database_url) as s:
        assert sum(repo.jobs_by_status(s).values()) == 0


def test_a_forged_cursor_holding_nul_is_an_invalid_cursor(pg_api):
    """A cursor is base64 of ``created_at|id``; the id it carries reaches the query, so only an id's own
    shape may pass."""
    api = pg_api
    batch_id = api.client.post("/v1/batches", headers=api.a, json={"name": "album"}).json()["id"]
    raw = f"{datetime.now(UTC).isoformat()}|".encode() + b"\x00" * 36
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    for url in ("/v1/batches", f"/v1/batches/{batch_id}/jobs"):
        r = api.client.get(url, headers=api.a, params={"cursor": cursor})
        assert error_of(r) == (422, "invalid_cursor"), (url, r.text)
