"""Fixity end to end on the real stack (redis-server, PostgreSQL, moto's S3 server, ``pikfix worker`` and
``pikfix api`` processes): a client digest that does not match is refused over HTTP with nothing kept, an
original overwritten in S3 after upload fails its job ``fixity_failed`` (and the worker goes on to the next
job), and a good result carries its own digest, sent as ``Content-Digest`` with the download."""

from __future__ import annotations

import base64
import hashlib

import boto3
import httpx
import pytest
from fixtures.moto_service import AWS_REGION, AWS_TEST_ENV
from helpers import photo_bytes

from db import repository as repo
from db.session import session_scope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def rfc9530(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def _s3(cluster):
    return boto3.client("s3", endpoint_url=cluster.bucket.endpoint_url, region_name=AWS_REGION,
                        aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"])


def test_a_tampered_original_fails_its_job_and_the_worker_goes_on(cluster) -> None:
    tenant = cluster.new_tenant()
    tampered_photo, good_photo = photo_bytes(64, 48, seed=1), photo_bytes(64, 48, seed=2)
    batch_id, (tampered, good) = cluster.add_jobs(tenant, [("a.jpg", tampered_photo), ("b.jpg", good_photo)])
    # Someone overwrites the stored master after upload: same key, other bytes.
    _s3(cluster).put_object(Bucket=cluster.bucket.bucket, Key=cluster.job(tampered).input_key,
                            Body=photo_bytes(64, 48, seed=3))
    cluster.start_worker(concurrency=1)
    cluster.dispatch()
    cluster.wait_finished(tenant, 2, timeout=240)

    bad, ok = cluster.job(tampered), cluster.job(good)
    assert (bad.status, bad.error_code, bad.attempts) == ("failed", "fixity_failed", 1)
    assert bad.output_key is None and bad.output_sha256 is None
    assert not list(cluster.store.list_keys(f"{tenant}/results/{tampered}"))
    assert ok.status == "succeeded"
    assert ok.output_sha256 == hashlib.sha256(cluster.store.get_bytes(ok.output_key)).hexdigest()
    with session_scope(cluster.database_url, readonly=True) as s:
        checks = {j: [(e.outcome, e.actor) for e in repo.job_events(s, j, kinds=("fixity",))]
                  for j in (tampered, good)}
    assert [o for o, _ in checks[tampered]] == ["failure"] and [o for o, _ in checks[good]] == ["success"]
    assert all(actor and not actor.startswith("api:") for _, actor in checks[tampered] + checks[good])  # a worker

    api = cluster.start_api()
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        listed = {j["id"]: j for j in http.get(f"/v1/batches/{batch_id}/jobs").json()["items"]}
        assert listed[tampered]["error"]["code"] == "fixity_failed"
        assert listed[good]["output_sha256"] == ok.output_sha256
        assert listed[good]["input_sha256"] == hashlib.sha256(good_photo).hexdigest()
        result = http.get(f"/v1/jobs/{good}/result", follow_redirects=False)
        assert result.status_code == 307
        served = httpx.get(result.headers["location"], timeout=30).content
        assert result.headers["content-digest"] == rfc9530(served)


def test_a_wrong_client_digest_is_refused_over_http(cluster) -> None:
    tenant = cluster.new_tenant()
    api = cluster.start_api()
    photo = photo_bytes(64, 48, seed=5)
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        r = http.post("/v1/jobs", files={"file": ("scan.jpg", photo, "image/jpeg")},
                      headers={"Content-Digest": rfc9530(photo + b"x")})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "digest_mismatch" and "scan.jpg" in r.json()["error"]["message"]
        assert not list(cluster.store.list_keys(f"{tenant}/originals/"))  # nothing stored

        batch = http.post("/v1/batches", json={"name": "presigned", "options": {"reference_mode": "none"}}).json()
        uploads = http.post(f"/v1/batches/{batch['id']}/uploads", json={"files": ["p1.jpg"]}).json()["uploads"]
        assert httpx.put(uploads[0]["url"], content=photo, timeout=30).status_code == 200
        wrong = {"p1.jpg": hashlib.sha256(b"not the photo").hexdigest()}
        r = http.post(f"/v1/batches/{batch['id']}/submit", json={"digests": wrong})
        assert r.status_code == 422 and r.json()["error"]["code"] == "digest_mismatch", r.text
        assert http.get(f"/v1/batches/{batch['id']}").json()["status"] == "open"  # nothing registered
        r = http.post(f"/v1/batches/{batch['id']}/submit", json={"digests": {"p1.jpg": rfc9530(photo)}})
        assert r.status_code == 200 and r.json()["registered"] == 1, r.text
    with session_scope(cluster.database_url, readonly=True) as s:
        jobs, _ = repo.list_batch_jobs(s, tenant, batch["id"])
    assert [j.input_sha256 for j in jobs] == [hashlib.sha256(photo).hexdigest()]
