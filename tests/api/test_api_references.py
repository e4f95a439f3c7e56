"""The reference corpus over HTTP, in-process: upload (indexed eagerly), list, inspect, delete, retrieval."""

from __future__ import annotations

from conftest import jpeg_bytes, png_bytes


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
