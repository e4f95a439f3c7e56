"""IIIF manifests of a batch over HTTP: schema-valid, one Choice per photo, images behind link tokens.

The manifest is checked against the IIIF Presentation 3 JSON schema of the IIIF presentation validator
(``tests/fixtures/iiif``); a broken manifest is shown to fail it, so the check is known to bite.
"""

from __future__ import annotations

import copy
import hashlib
import io
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import corrupt_png, jpeg_bytes, png_bytes
from fixtures.iiif import schema_errors
from pg_harness import postgres_s3_api
from PIL import Image

from api.routers import iiif
from api.uploads import content_digest
from db import repository as repo
from db.session import session_scope
from pikfix import __version__

MANIFEST_TYPE = 'application/ld+json;profile="http://iiif.io/api/presentation/3/context.json"'


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


def album(api, headers=None, **options) -> tuple[str, dict[str, dict]]:
    """A batch of two good photos (PNG, JPEG) and one that fails in the worker; jobs by input name."""
    headers = headers or api.a
    batch = api.client.post("/v1/batches", headers=headers, json={"name": "Album 1923", "options": options})
    assert batch.status_code == 201, batch.text
    files = [("files", (name, data, "application/octet-stream")) for name, data in
             (("hall.png", png_bytes(80, 60, mode="RGB", seed=3)), ("garden.jpg", jpeg_bytes(72, 48)),
              ("broken.png", corrupt_png()))]
    r = api.client.post(f"/v1/batches/{batch.json()['id']}/photos", headers=headers, files=files)
    assert r.status_code == 201, r.text
    return batch.json()["id"], {j["input_name"]: j for j in r.json()["jobs"]}


def manifest_of(api, batch_id: str, **params) -> dict:
    r = api.client.get(f"/v1/batches/{batch_id}/iiif/manifest", headers=api.a, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == MANIFEST_TYPE
    assert r.headers["access-control-allow-origin"] == "*"
    return r.json()


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def choice_of(canvas: dict) -> list[dict]:
    body = canvas["items"][0]["items"][0]["body"]
    assert body["type"] == "Choice"
    return body["items"]


# --------------------------------------------------------------------------- the manifest


def test_manifest_is_valid_iiif_with_a_choice_per_photo(api):
    batch_id, jobs = album(api)
    manifest = manifest_of(api, batch_id)
    assert schema_errors(manifest) == []
    assert manifest["@context"] == "http://iiif.io/api/presentation/3/context.json"
    assert manifest["type"] == "Manifest" and manifest["label"] == {"none": ["Album 1923"]}
    # One canvas per photo with a result, in upload order; the failed one has none.
    assert [c["label"] for c in manifest["items"]] == [{"none": ["hall.png"]}, {"none": ["garden.jpg"]}]
    assert jobs["broken.png"]["status"] == "failed"
    for canvas, name in zip(manifest["items"], ("hall.png", "garden.jpg"), strict=True):
        job = jobs[name]
        assert (canvas["width"], canvas["height"]) == (job["width"], job["height"])
        (text,) = canvas["summary"]["en"]
        assert text.startswith(f"AI-colourized copy: restored and colourized by pikfix {__version__}")
        for fact in (job["model_name"], job["checkpoint_sha256"], job["input_sha256"], name):
            assert fact in text
        assert {m["label"]["en"][0]: m["value"]["none"][0] for m in canvas["metadata"]} == {
            "Source SHA-256": job["input_sha256"], "Model": job["model_name"],
            "Checkpoint SHA-256": job["checkpoint_sha256"]}
        restored, original = choice_of(canvas)
        assert restored["label"] == {"en": ["Restored and colourized"]} and restored["format"] == "image/png"
        assert original["label"] == {"en": ["Original"]}
        assert original["format"] == ("image/png" if name.endswith(".png") else "image/jpeg")
        annotation = canvas["items"][0]["items"][0]
        assert annotation["motivation"] == "painting" and annotation["target"] == canvas["id"]


def test_a_restore_only_batch_says_so(api):
    batch_id, _ = album(api, colourize=False)
    canvas = manifest_of(api, batch_id)["items"][0]
    assert choice_of(canvas)[0]["label"] == {"en": ["Restored"]}
    assert canvas["summary"]["en"][0].startswith("AI-restored copy: restored by pikfix")


def test_images_are_served_by_the_token_in_their_urls(api):
    batch_id, jobs = album(api, output_format="jpeg")
    canvas = manifest_of(api, batch_id)["items"][0]
    restored, original = choice_of(canvas)
    assert restored["format"] == "image/jpeg"
    # No Authorization header: a viewer has only the URL.
    r = api.client.get(relative(restored["id"]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["content-disposition"] == 'inline; filename="hall.restored.jpg"'
    assert r.content == api.client.get(f"/v1/jobs/{jobs['hall.png']['id']}/result", headers=api.a).content
    assert Image.open(io.BytesIO(r.content)).size == (80, 60)
    assert r.headers["content-digest"] == content_digest(hashlib.sha256(r.content).hexdigest())
    r = api.client.get(relative(original["id"]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert hashlib.sha256(r.content).hexdigest() == jobs["hall.png"]["input_sha256"]
    assert r.headers["content-digest"] == content_digest(jobs["hall.png"]["input_sha256"])


def test_the_manifest_opens_with_its_token_and_keeps_it(api):
    batch_id, _ = album(api)
    manifest = manifest_of(api, batch_id, expires_s=600)
    token = token_of(manifest["id"])
    r = api.client.get(relative(manifest["id"]))  # what a viewer does with the manifest's id
    assert r.status_code == 200 and r.headers["content-type"] == MANIFEST_TYPE
    again = r.json()
    assert again == manifest  # same token everywhere: a token never renews itself
    assert {token_of(image["id"]) for c in again["items"] for image in choice_of(c)} == {token}
    r = api.client.get(relative(manifest["id"]) + "&expires_s=3600")
    assert error_of(r) == (422, "validation_error")


def test_manifest_pages_through_the_jobs(api, monkeypatch):
    batch_id, _ = album(api)
    whole = manifest_of(api, batch_id)
    monkeypatch.setattr(iiif, "PAGE", 1)  # one job per read: every page boundary is crossed
    paged = manifest_of(api, batch_id)
    assert [c["id"] for c in paged["items"]] == [c["id"] for c in whole["items"]]
    assert schema_errors(paged) == []


def test_an_empty_batch_has_a_valid_manifest_without_canvases(api):
    batch = api.client.post("/v1/batches", headers=api.a, json={"name": "empty"}).json()
    manifest = manifest_of(api, batch["id"])
    assert manifest["items"] == [] and schema_errors(manifest) == []


def test_the_schema_check_bites(api):
    batch_id, _ = album(api)
    good = manifest_of(api, batch_id)
    breakages = {
        "no label": lambda m: m.pop("label"),
        "label not a language map": lambda m: m.update(label="Album"),
        "canvas without size": lambda m: [m["items"][0].pop(k) for k in ("width", "height")],
        "zero height": lambda m: m["items"][0].update(height=0),
        "id not a URL": lambda m: m["items"][1].update(id="canvas-2"),
        "unknown property": lambda m: m.update(pages=3),
    }
    for what, breakage in breakages.items():
        broken = copy.deepcopy(good)
        breakage(broken)
        assert schema_errors(broken), what


# --------------------------------------------------------------------------- access


def test_tokens_are_checked(api):
    batch_id, jobs = album(api)
    other_id, other_jobs = album(api)
    manifest = manifest_of(api, batch_id)
    url = f"/v1/batches/{batch_id}/iiif/manifest"
    token = token_of(manifest["id"])
    prefix, expires, signature = token.split(".")
    forged = [
        f"{prefix}.{int(expires) + 3600}.{signature}",  # a longer life
        f"{prefix}.{expires}.{signature[:-2]}AA",
        "000000000000." + expires + "." + signature,
        "not-a-token",
    ]
    for bad in forged:
        assert error_of(api.client.get(url, params={"token": bad})) == (401, "unauthorized"), bad
    assert error_of(api.client.get(url)) == (401, "unauthorized")
    # A token opens its own batch only.
    other = f"/v1/batches/{other_id}/iiif"
    assert error_of(api.client.get(f"{other}/manifest", params={"token": token})) == (401, "unauthorized")
    job = other_jobs["hall.png"]["id"]
    r = api.client.get(f"{other}/images/{job}/original", params={"token": token})
    assert error_of(r) == (401, "unauthorized")
    r = api.client.get(f"/v1/batches/{batch_id}/iiif/images/{job}/original", params={"token": token})
    assert error_of(r) == (404, "not_found")  # another batch's job through this batch's token


def test_expired_and_revoked_tokens_are_refused(api):
    batch_id, _ = album(api)
    url = f"/v1/batches/{batch_id}/iiif/manifest"
    ctx = api.app.state.ctx
    prefix, key_hash = api.key_a.split("_")[1], repo.hash_key(api.key_a)
    expired = iiif.mint_token(ctx, batch_id, prefix, key_hash, ttl_s=-1)
    assert error_of(api.client.get(url, params={"token": expired})) == (401, "unauthorized")
    live = iiif.mint_token(ctx, batch_id, prefix, key_hash, ttl_s=600)
    assert api.client.get(url, params={"token": live}).status_code == 200
    with session_scope(api.database_url) as s:
        assert repo.revoke_api_key(s, api.tenant_a, prefix)
    assert error_of(api.client.get(url, params={"token": live})) == (401, "unauthorized")


def test_another_tenant_and_bad_ids_get_404(api):
    batch_id, jobs = album(api)
    job = jobs["hall.png"]["id"]
    base = f"/v1/batches/{batch_id}/iiif"
    assert error_of(api.client.get(f"{base}/manifest", headers=api.b)) == (404, "not_found")
    assert error_of(api.client.get(f"{base}/images/{job}/original", headers=api.b)) == (404, "not_found")
    assert error_of(api.client.get("/v1/batches/nope/iiif/manifest", headers=api.a)) == (404, "not_found")
    assert error_of(api.client.get(f"{base}/images/nope/original", headers=api.a)) == (404, "not_found")
    assert error_of(api.client.get(f"{base}/images/{job}/sepia", headers=api.a)) == (422, "validation_error")
    failed = jobs["broken.png"]["id"]
    assert error_of(api.client.get(f"{base}/images/{failed}/restored", headers=api.a)) == (409, "job_not_finished")
    assert api.client.get(f"{base}/images/{failed}/original", headers=api.a).status_code == 200
    r = api.client.get(f"{base}/manifest", headers=api.a, params={"expires_s": 5})
    assert error_of(r) == (422, "validation_error")


def test_a_lost_image_answers_result_missing(api):
    batch_id, jobs = album(api)
    job_id = jobs["hall.png"]["id"]
    with session_scope(api.database_url) as s:
        api.store.delete(repo.get_job(s, api.tenant_a, job_id).output_key)
    r = api.client.get(f"/v1/batches/{batch_id}/iiif/images/{job_id}/restored", headers=api.a)
    assert error_of(r) == (404, "result_missing")


# --------------------------------------------------------------------------- S3: presigned


@pytest.fixture
def pg_api(tmp_path, shared_models, postgres_url, s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket) as harness:
        yield harness


def test_images_redirect_to_presigned_urls_on_s3(pg_api):
    api = pg_api
    batch_id, jobs = album(api)
    manifest = manifest_of(api, batch_id)
    assert schema_errors(manifest) == []
    restored, original = choice_of(manifest["items"][0])
    for image, expected in ((restored, None), (original, jobs["hall.png"]["input_sha256"])):
        r = api.client.get(relative(image["id"]), follow_redirects=False)
        assert r.status_code == 307 and r.headers["access-control-allow-origin"] == "*"
        stored = httpx.get(r.headers["location"], timeout=10)
        assert stored.status_code == 200
        if expected:
            assert hashlib.sha256(stored.content).hexdigest() == expected
        else:
            assert Image.open(io.BytesIO(stored.content)).size == (80, 60)
