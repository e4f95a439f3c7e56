"""Setting up the object store: a missing bucket says so (store, ``/readyz``, the API's and a worker's
start-up logs), and presigned URLs name the endpoint clients reach while the service itself keeps using
its own, all against moto's S3 server and real ``pikfix api`` / ``pikfix worker`` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from fixtures.moto_service import AWS_REGION, AWS_TEST_ENV, S3Bucket
from fixtures.processes import free_port, port_open, wait_until

from service.settings import Settings
from storage import BucketMissing, S3Store, StorageError, open_store

CLI = [sys.executable, "-m", "service.cli"]


def _store(bucket: str, endpoint: str, **options) -> S3Store:
    return S3Store(bucket, endpoint_url=endpoint, region=AWS_REGION, access_key="testing", secret_key="testing",
                   connect_timeout=1, read_timeout=5, max_attempts=1, **options)


def _missing_bucket_message(bucket: str, endpoint: str) -> str:
    return (f"bucket {bucket} does not exist; create it with `aws s3 mb s3://{bucket} --endpoint-url {endpoint}` "
            f"(or `mc mb ALIAS/{bucket}` on MinIO)")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKFIX_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(AWS_TEST_ENV)
    env.update(PIKFIX_DATA_DIR=str(tmp_path / "data"), PIKFIX_PRELOAD_MODEL="0", PYTHONUNBUFFERED="1", **extra)
    return env


# --------------------------------------------------------------------------- a missing bucket


def test_check_names_a_missing_bucket_and_how_to_create_it(moto_server) -> None:
    bucket = f"never-made-{uuid.uuid4().hex[:8]}"
    store = _store(bucket, moto_server.endpoint_url)
    with pytest.raises(BucketMissing) as missing:
        store.check()
    assert str(missing.value) == _missing_bucket_message(bucket, moto_server.endpoint_url)
    assert store.ping() is False
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError) as unreachable:
        _store(bucket, dead).check()
    assert not isinstance(unreachable.value, BucketMissing) and dead in str(unreachable.value)
    moto_server.create_bucket(bucket)
    try:
        store.check()
        assert store.ping() is True
    finally:
        moto_server.delete_bucket(bucket)


def test_readyz_and_start_up_logs_say_the_bucket_does_not_exist(
    moto_server, fresh_redis_server, process_group, tmp_path: Path
) -> None:
    bucket = f"never-made-{uuid.uuid4().hex[:8]}"
    message = _missing_bucket_message(bucket, moto_server.endpoint_url)
    env = _env(tmp_path, PIKFIX_STORAGE_URL=f"s3://{bucket}", PIKFIX_S3_ENDPOINT_URL=moto_server.endpoint_url,
               PIKFIX_S3_REGION=AWS_REGION, PIKFIX_BROKER_URL=fresh_redis_server.url)
    port = free_port()
    api = process_group.start_process([*CLI, "api", "--workers", "1", "--port", str(port)], env=env,
                                      ready=lambda: port_open(port), timeout=120, name="api")
    r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30)
    assert r.status_code == 503
    storage = r.json()["checks"]["storage"]
    assert not storage["ok"] and storage["detail"] == message
    assert wait_until(lambda: message in api.log_text(), timeout=30), api.log_text(tail=3000)

    worker = process_group.start_process(
        [*CLI, "worker", "--queues", "maintenance", "--concurrency", "1", "--hostname", "setup@test"],
        env=env, ready=lambda proc: "setup@test ready." in proc.log_text(), timeout=120, name="worker")
    assert wait_until(lambda: message in worker.log_text(), timeout=30), worker.log_text(tail=3000)
    assert "not reachable or not writable" not in api.log_text() + worker.log_text()


# --------------------------------------------------------------------------- presigned URLs


def test_presigned_urls_use_the_public_endpoint_and_everything_else_the_internal_one(s3_bucket) -> None:
    internal, bucket = s3_bucket
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: a call the service made there would fail
    store = _store(bucket, internal, public_endpoint_url=unreachable)
    store.put_bytes("t/a.bin", b"payload")
    assert store.get_bytes("t/a.bin") == b"payload" and store.list_keys("t/") == ["t/a.bin"]
    store.check()
    for url in (store.presigned_get_url("t/a.bin"), store.presigned_put_url("t/b.bin")):
        assert url.startswith(f"{unreachable}/{bucket}/t/"), url

    # Signed for the public name, the URLs work when followed there (moto answers as "localhost" too).
    port = urlparse(internal).port
    public = f"http://localhost:{port}"
    settings = Settings(storage_url=f"s3://{bucket}", s3_endpoint_url=internal, s3_public_endpoint_url=public,
                        s3_region=AWS_REGION, s3_access_key_id="testing", s3_secret_access_key="testing")
    wired = open_store(settings=settings)
    got = wired.presigned_get_url("t/a.bin", filename="a.bin")
    assert got.startswith(f"{public}/{bucket}/t/a.bin?")
    assert httpx.get(got, timeout=30).content == b"payload"
    put = wired.presigned_put_url("t/b.bin")
    assert urlparse(put).netloc == f"localhost:{port}"
    assert httpx.put(put, content=b"from a client", timeout=30).status_code == 200
    assert store.get_bytes("t/b.bin") == b"from a client"
    plain = open_store(settings=settings.model_copy(update={"s3_public_endpoint_url": None}))
    assert plain.presigned_get_url("t/a.bin").startswith(f"{internal}/{bucket}/")  # unset: the one endpoint


def test_the_api_hands_out_upload_urls_for_the_public_endpoint(s3_bucket: S3Bucket, process_group,
                                                               tmp_path: Path) -> None:
    internal, bucket = s3_bucket
    public = f"http://localhost:{urlparse(internal).port}"
    env = _env(tmp_path, **s3_bucket.env, PIKFIX_S3_PUBLIC_ENDPOINT_URL=public)

    def cli(*argv: str) -> str:
        done = subprocess.run([*CLI, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    cli("db", "upgrade")
    cli("tenants", "create", "bureau")
    key = cli("keys", "create", "bureau")
    port = free_port()
    process_group.start_process([*CLI, "api", "--workers", "1", "--port", str(port)], env=env,
                                ready=lambda: port_open(port), timeout=120, name="api")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as http:
        batch = http.post("/v1/batches", json={"name": "album"})
        assert batch.status_code == 201, batch.text
        r = http.post(f"/v1/batches/{batch.json()['id']}/uploads", json={"files": ["scan.jpg"]})
        assert r.status_code == 200, r.text
    (upload,) = r.json()["uploads"]
    assert upload["url"].startswith(f"{public}/{bucket}/"), upload["url"]
    assert httpx.put(upload["url"], content=b"bytes of a scan", timeout=30).status_code == 200
    stored = [k for k in s3_bucket.store().list_keys() if k.endswith("scan.jpg")]
    assert len(stored) == 1 and s3_bucket.store().get_bytes(stored[0]) == b"bytes of a scan"
