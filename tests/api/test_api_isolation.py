"""Tenant isolation: every route of the OpenAPI spec, called with another tenant's key on the first
tenant's ids, answers 404 ``not_found`` (never 403, never 200, never 500), and changes nothing.

Routes are enumerated from the app's own spec, so a route added later is covered automatically; a
route with a JSON body must get an entry in ``JSON_BODIES`` or the test fails and says so.
"""

from __future__ import annotations

from conftest import corrupt_png, jpeg_bytes, png_bytes

PUBLIC = {"/healthz", "/readyz", "/metrics"}
# Routes that join two ids the owner's resources do not pair: their owner also gets a 404.
UNPAIRED = {"/v1/batches/{batch_id}/iiif/images/{job_id}/{which}"}  # the job is not in that batch
JSON_BODIES = {
    ("post", "/v1/batches"): {"name": "x"},
    ("post", "/v1/batches/{batch_id}/uploads"): {"files": ["a.png"]},
    ("post", "/v1/batches/{batch_id}/submit"): {},
    ("post", "/v1/batches/{batch_id}/multipart"): {"name": "a.png", "size": 6 * 1024 * 1024},
    ("post", "/v1/batches/{batch_id}/multipart/complete"): {
        "name": "a.png", "upload_id": "x", "parts": [{"part_number": 1, "etag": "e"}]},
    ("post", "/v1/jobs/{job_id}/review"): {"decision": "approve"},
}


def _multipart(operation: dict) -> list[tuple[str, tuple[str, bytes, str]]] | None:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("multipart/form-data", {}).get("schema")
    if schema is None:
        return None
    return [(name, (f"{name}.png", png_bytes(), "image/png")) for name in schema.get("required", [])]


def _call(client, method: str, template: str, ids: dict[str, str], operation: dict, headers: dict[str, str]):
    path = template.format(**ids)
    files = _multipart(operation)
    kwargs: dict = {"headers": headers}
    if files is not None:
        kwargs["files"] = files
    elif "requestBody" in operation:
        assert (method, template) in JSON_BODIES, f"add a valid JSON body for {method.upper()} {template}"
        kwargs["json"] = JSON_BODIES[(method, template)]
    return client.request(method.upper(), path, **kwargs)


def _resources_of_a(api) -> dict[str, str]:
    c = api.client
    batch = c.post("/v1/batches", headers=api.a, json={"name": "private album"}).json()
    job = c.post("/v1/jobs", headers=api.a, files={"file": ("d.png", corrupt_png(), "image/png")}).json()
    assert job["status"] == "failed"  # so that a retry by its owner would be allowed
    ref = c.post("/v1/references", headers=api.a, files={"files": ("r.jpg", jpeg_bytes(), "image/jpeg")}).json()
    return {"batch_id": batch["id"], "job_id": job["id"], "reference_id": ref["references"][0]["id"],
            "which": "original"}


def test_every_route_hides_other_tenants_resources(api):
    ids = _resources_of_a(api)
    spec = api.client.get("/openapi.json").json()
    checked = 0
    for template, operations in spec["paths"].items():
        if template in PUBLIC:
            continue
        path = template.format(**ids)
        for method, operation in operations.items():
            r = _call(api.client, method, template, ids, operation, {})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (method, template)
            if "{" not in template:
                continue  # creates or lists the caller's own resources: covered below
            r = _call(api.client, method, template, ids, operation, api.b)
            assert r.status_code == 404, (method, template, r.status_code, r.text)
            assert r.json() == {"error": {"code": "not_found", "message": r.json()["error"]["message"]}}
            assert "private" not in r.text and ids["batch_id"] not in r.text
            # The owner is not refused the same way: the ids are real.
            mine = _call(api.client, method, template, ids, operation, api.a)
            assert template in UNPAIRED or mine.status_code < 500 and (mine.status_code != 404 or mine.json()["error"]["code"] != "not_found"), (
                method, template, mine.text)
            checked += 1
        # A method the route does not have is 405, whoever asks.
        if "patch" not in operations:
            r = api.client.patch(path, headers=api.b)
            assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert checked >= 12

    # Listings of the other tenant do not contain the first tenant's resources.
    c = api.client
    assert c.get("/v1/batches", headers=api.b).json()["items"] == []
    assert c.get("/v1/references", headers=api.b).json()["items"] == []


def test_other_tenants_calls_change_nothing(api):
    ids = _resources_of_a(api)
    c = api.client
    for method, path in [
        ("post", f"/v1/batches/{ids['batch_id']}/cancel"),
        ("post", f"/v1/batches/{ids['batch_id']}/submit"),
        ("post", f"/v1/jobs/{ids['job_id']}/retry"),
        ("delete", f"/v1/references/{ids['reference_id']}"),
    ]:
        assert c.request(method.upper(), path, headers=api.b).status_code == 404
    assert c.get(f"/v1/batches/{ids['batch_id']}", headers=api.a).json()["status"] == "open"
    job = c.get(f"/v1/jobs/{ids['job_id']}", headers=api.a).json()
    assert job["status"] == "failed" and job["attempts"] == 1
    assert c.get(f"/v1/references/{ids['reference_id']}", headers=api.a).status_code == 200
    # A job of tenant B cannot use tenant A's reference either.
    r = c.post("/v1/jobs", headers=api.b, files={"file": ("g.png", png_bytes(), "image/png")},
               data={"reference_id": ids["reference_id"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_reference"
