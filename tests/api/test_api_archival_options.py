"""Archival integrity through the in-process API (SQLite, local folder, eager tasks, the tiny model):
restore-only and marked jobs, client digests and the result's own, cancel, and the review gate."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
from conftest import png_bytes
from PIL import Image

from db import repository as repo
from db.session import session_scope


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


def rfc9530(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def post_job(api, data: bytes, name: str = "scan.png", headers=None, **fields):
    return api.client.post("/v1/jobs", headers={**api.a, **(headers or {})},
                           files={"file": (name, data, "application/octet-stream")}, data=fields)


def new_batch(api, **options) -> str:
    r = api.client.post("/v1/batches", headers=api.a, json={"name": "album", "options": options})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def add_photos(api, batch_id: str, photos: dict[str, bytes], **fields):
    files = [("files", (name, data, "image/png")) for name, data in photos.items()]
    return api.client.post(f"/v1/batches/{batch_id}/photos", headers=api.a, files=files, data=fields)


def events(api, job_id: str, kinds=None) -> list[tuple]:
    with session_scope(api.database_url, readonly=True) as s:
        return [(e.kind, e.from_status, e.to_status, e.outcome, e.actor)
                for e in repo.job_events(s, job_id, kinds=kinds)]


# --------------------------------------------------------------------------- options


def test_restore_only_and_marked_options_are_stored_and_used(api):
    photo = png_bytes(64, 48, mode="RGB", seed=3)
    job = post_job(api, photo, colourize="false", mark="true", output_format="png").json()
    assert job["status"] == "succeeded", job
    assert (job["colourize"], job["mark"]) == (False, True)
    result = api.client.get(job["result_url"], headers=api.a)
    assert result.status_code == 200
    rgb = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB")).astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # grey, bit for bit
    detail = api.client.get(f"/v1/jobs/{job['id']}", headers=api.a).json()
    assert detail["reference"] is None  # restore-only looks for no reference


def test_batch_options_take_the_new_fields_and_refuse_bad_ones(api):
    batch_id = new_batch(api, colourize=False, mark=True, review="flagged", output_format="jp2")
    batch = api.client.get(f"/v1/batches/{batch_id}", headers=api.a).json()
    assert {k: batch["options"][k] for k in ("colourize", "mark", "review", "output_format")} == {
        "colourize": False, "mark": True, "review": "flagged", "output_format": "jp2"}
    for bad in ({"colourize": "no"}, {"review": "sometimes"}, {"output_format": "gif"}, {"mark": 1}):
        r = api.client.post("/v1/batches", headers=api.a, json={"name": "x", "options": bad})
        assert error_of(r) == (422, "validation_error"), bad
    assert error_of(post_job(api, png_bytes(), colourize="perhaps")) == (422, "validation_error")


def test_batch_jobs_inherit_the_options(api):
    batch_id = new_batch(api, reference_mode="none", colourize=False, mark=True)
    r = add_photos(api, batch_id, {"a.png": png_bytes(seed=1)})
    assert r.status_code == 201, r.text
    job = r.json()["jobs"][0]
    assert (job["colourize"], job["mark"]) == (False, True)


# --------------------------------------------------------------------------- digests


def test_a_matching_client_digest_is_taken_and_both_digests_are_returned(api):
    photo = png_bytes(seed=11)
    job = post_job(api, photo, headers={"Content-Digest": rfc9530(photo)}).json()
    assert job["status"] == "succeeded" and job["input_sha256"] == hashlib.sha256(photo).hexdigest()
    result = api.client.get(f"/v1/jobs/{job['id']}/result", headers=api.a)
    assert job["output_sha256"] == hashlib.sha256(result.content).hexdigest()
    assert result.headers["Content-Digest"] == rfc9530(result.content)
    listed = api.client.get(f"/v1/jobs/{job['id']}", headers=api.a).json()
    assert (listed["input_sha256"], listed["output_sha256"]) == (job["input_sha256"], job["output_sha256"])
    kinds = [e[0] for e in events(api, job["id"], kinds=None)]
    assert "ingestion" in kinds and "fixity" in kinds


def test_a_wrong_client_digest_is_refused_and_nothing_is_kept(api):
    photo = png_bytes(seed=12)
    r = post_job(api, photo, headers={"Content-Digest": rfc9530(b"other bytes")})
    assert error_of(r) == (422, "digest_mismatch")
    assert "scan.png" in r.json()["error"]["message"]
    assert list(api.store.list_keys(f"{api.tenant_a}/")) == []
    assert error_of(post_job(api, photo, headers={"Content-Digest": "md5=:abc:"})) == (422, "validation_error")


def test_photos_digests_field_checks_each_named_file(api):
    batch_id = new_batch(api, reference_mode="none")
    a, b = png_bytes(seed=1), png_bytes(seed=2)
    good = {"a.png": hashlib.sha256(a).hexdigest(), "b.png": rfc9530(b)}
    bad = {**good, "b.png": hashlib.sha256(a).hexdigest()}
    r = add_photos(api, batch_id, {"a.png": a, "b.png": b}, digests=json.dumps(bad))
    assert error_of(r) == (422, "digest_mismatch") and "b.png" in r.json()["error"]["message"]
    assert api.client.get(f"/v1/batches/{batch_id}", headers=api.a).json()["progress"]["total"] == 0
    assert error_of(add_photos(api, batch_id, {"a.png": a}, digests=json.dumps({"zzz.png": good["a.png"]}))) == (
        422, "validation_error")
    r = add_photos(api, batch_id, {"a.png": a, "b.png": b}, digests=json.dumps(good))
    assert r.status_code == 201, r.text and len(r.json()["jobs"]) == 2


def test_the_worker_fails_a_job_whose_original_changed_in_storage(api):
    photo = png_bytes(seed=21)
    with session_scope(api.database_url) as s:  # queued, not sent: the original is swapped before it runs
        key = f"{api.tenant_a}/originals/tampered.png"
        api.store.put_bytes(key, png_bytes(seed=22))
        job_id = repo.create_job(s, api.tenant_a, None, key, hashlib.sha256(photo).hexdigest(), "t.png",
                                 len(photo)).id
    from workers.tasks import restore_job

    restore_job.apply(args=[job_id])
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.a).json()
    assert job["status"] == "failed" and job["error"]["code"] == "fixity_failed", job
    assert job["output_sha256"] is None and job["result_url"] is None
    fixity = [e for e in events(api, job_id, kinds=("fixity",))]
    assert [(e[0], e[3]) for e in fixity] == [("fixity", "failure")]
    assert not any(k for k in api.store.list_keys(f"{api.tenant_a}/") if "/results/" in k)


# --------------------------------------------------------------------------- cancel


def _queued_job(api) -> str:
    with session_scope(api.database_url) as s:
        return repo.create_job(s, api.tenant_a, None, f"{api.tenant_a}/originals/x.png", None, "x.png", 1).id


def test_a_queued_job_is_cancelled_and_never_runs(api):
    job_id = _queued_job(api)
    r = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.a)
    assert r.status_code == 200, r.text
    assert r.json()["job"]["status"] == "cancelled" and r.json()["stopping"] is False
    again = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.a)
    assert again.status_code == 200 and again.json()["job"]["status"] == "cancelled"
    from workers.tasks import restore_job

    assert restore_job.apply(args=[job_id]).get() == "skipped"
    cancel_events = events(api, job_id, kinds=("cancel",))
    assert len(cancel_events) == 1 and cancel_events[0][4].startswith("api:")


def test_a_finished_job_cannot_be_cancelled(api):
    done = post_job(api, png_bytes(seed=4)).json()
    assert error_of(api.client.post(f"/v1/jobs/{done['id']}/cancel", headers=api.a)) == (409, "job_not_cancellable")
    assert error_of(api.client.post(f"/v1/jobs/{done['id']}/cancel", headers=api.b)) == (404, "not_found")


def test_a_running_job_flagged_for_cancel_stops_at_its_safe_point(api):
    """The flag is set while the job runs (claimed here, as a worker would); the pipeline's first safe
    point ends it cancelled with nothing stored."""
    photo = png_bytes(seed=31)
    key = f"{api.tenant_a}/originals/run.png"
    api.store.put_bytes(key, photo)
    with session_scope(api.database_url) as s:
        job_id = repo.create_job(s, api.tenant_a, None, key, hashlib.sha256(photo).hexdigest(), "r.png", 9).id
    with session_scope(api.database_url) as s:
        repo.claim_job(s, job_id, "someone-else", 5)  # a first run, now lost
    r = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.a)
    assert r.json()["stopping"] is True and r.json()["job"]["status"] == "running"
    from workers.tasks import restore_job

    assert restore_job.apply(args=[job_id]).get() == "cancelled"
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.a).json()
    assert job["status"] == "cancelled" and job["result_url"] is None and job["output_sha256"] is None
    assert not any("/results/" in k for k in api.store.list_keys(f"{api.tenant_a}/"))


# --------------------------------------------------------------------------- review gate


def _gated_batch(api, n: int = 2) -> tuple[str, list[dict]]:
    batch_id = new_batch(api, reference_mode="none", review="all")
    photos = {f"p{i}.png": png_bytes(seed=40 + i) for i in range(n)}
    assert add_photos(api, batch_id, photos).status_code == 201
    assert api.client.post(f"/v1/batches/{batch_id}/submit", headers=api.a).status_code == 200
    jobs = api.client.get(f"/v1/batches/{batch_id}/jobs", headers=api.a).json()["items"]
    return batch_id, jobs


def test_review_all_holds_results_until_decided(api):
    batch_id, jobs = _gated_batch(api, 3)
    assert [(j["status"], j["review"]) for j in jobs] == [("awaiting_review", "pending")] * 3
    assert api.client.get(jobs[0]["result_url"], headers=api.a).status_code == 200  # downloadable meanwhile
    pending = api.client.get(f"/v1/batches/{batch_id}/jobs?review=pending", headers=api.a).json()["items"]
    assert len(pending) == 3
    batch = api.client.get(f"/v1/batches/{batch_id}", headers=api.a).json()
    assert batch["status"] == "submitted" and batch["progress"]["counts"]["awaiting_review"] == 3

    approve = api.client.post(f"/v1/jobs/{jobs[0]['id']}/review", headers=api.a, json={"decision": "approve"})
    assert approve.status_code == 200 and approve.json()["job"]["status"] == "succeeded"
    assert approve.json()["job"]["review"] == "approved"
    reject = api.client.post(f"/v1/jobs/{jobs[1]['id']}/review", headers=api.a,
                             json={"decision": "reject", "note": "faces smeared"})
    assert reject.json()["job"]["status"] == "failed"
    assert reject.json()["job"]["error"] == {"code": "rejected_in_review", "message": "faces smeared"}
    redo = api.client.post(f"/v1/jobs/{jobs[2]['id']}/review", headers=api.a, json={"decision": "redo"}).json()
    assert redo["job"]["review"] == "rejected" and redo["redo"]["redo_of"] == jobs[2]["id"]
    assert redo["redo"]["status"] == "awaiting_review"  # the new attempt ran (eagerly) and waits in turn
    assert api.client.get(redo["job"]["result_url"], headers=api.a).status_code == 200  # the old one is kept
    assert api.client.get(f"/v1/batches/{batch_id}", headers=api.a).json()["status"] == "submitted"
    api.client.post(f"/v1/jobs/{redo['redo']['id']}/review", headers=api.a, json={"decision": "approve"})
    assert api.client.get(f"/v1/batches/{batch_id}", headers=api.a).json()["status"] == "finished"
    decided = events(api, jobs[1]["id"], kinds=("review",))
    assert [(e[3], e[4].startswith("api:")) for e in decided] == [("failure", True)]
    report = api.client.get(f"/v1/batches/{batch_id}/report", headers=api.a)
    assert report.status_code == 200, report.text
    assert "review: approved" in report.text and "review: rejected (faces smeared)" in report.text
    assert approve.json()["job"]["output_sha256"] in report.text and jobs[0]["input_sha256"] in report.text
    assert f"redo of <a href=\"#job-{jobs[2]['id']}\">" in report.text


def test_a_second_decision_is_refused(api):
    _, jobs = _gated_batch(api, 1)
    url = f"/v1/jobs/{jobs[0]['id']}/review"
    assert api.client.post(url, headers=api.a, json={"decision": "approve"}).status_code == 200
    assert error_of(api.client.post(url, headers=api.a, json={"decision": "redo"})) == (409, "job_not_awaiting_review")
    assert error_of(api.client.post(url, headers=api.a, json={"decision": "maybe"})) == (422, "validation_error")
    assert error_of(api.client.post(url, headers=api.b, json={"decision": "reject"})) == (404, "not_found")


def test_without_a_review_option_jobs_succeed_as_before(api):
    batch_id = new_batch(api, reference_mode="none")
    job = add_photos(api, batch_id, {"a.png": png_bytes(seed=5)}).json()["jobs"][0]
    assert job["status"] == "succeeded" and job["review"] is None
