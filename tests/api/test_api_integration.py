"""The whole service over real HTTP: ``pikfix api`` (uvicorn, 2 worker processes), a Celery worker and
beat (``pikfix worker`` / ``pikfix beat``), a private redis-server, a fresh PostgreSQL database and
moto's S3 server. Tenant and key come from the CLI; a batch is uploaded each of the three ways, polled
to completion, its results downloaded through presigned URLs, and the metrics and references read.
Flower is started against the same kind of broker and must list the worker behind basic auth.

A tiny Pik-Fix checkpoint built here (``PIKFIX_CHECKPOINT``) and 64-96 px photos keep it fast.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import TINY_CONFIG, jpeg_bytes, png_bytes, zip_bytes
from fixtures.processes import free_port, port_open
from PIL import Image

from pikfix.checkpoint import save_checkpoint
from pikfix.model import PikFix

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "service.cli"]
FLOW_TIMEOUT_S = 240.0


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"pikfix {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout.strip()


def _poll(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _base_env() -> dict[str, str]:
    """This process's environment without settings that would leak into the services under test."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIKFIX_") and k != "PROMETHEUS_MULTIPROC_DIR"}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def service_env(tmp_path: Path, fresh_redis_server, postgres_url: str, s3_bucket) -> dict[str, str]:
    checkpoint = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, PikFix(TINY_CONFIG).eval())
    return {
        **_base_env(),
        **s3_bucket.env,
        "PIKFIX_DATABASE_URL": postgres_url,
        "PIKFIX_BROKER_URL": fresh_redis_server.url,
        "PIKFIX_CHECKPOINT": str(checkpoint),
        "PIKFIX_DEVICE": "cpu",
        "PIKFIX_WORKING_SIZE": "64",
        "PIKFIX_DATA_DIR": str(tmp_path / "data"),
        "PIKFIX_MAINTENANCE_INTERVAL_S": "1",
        "PIKFIX_JOB_STUCK_AFTER_S": "120",
        "PIKFIX_FLOWER_BASIC_AUTH": "ops:s3cret",
        "PYTHONUNBUFFERED": "1",
    }


def _start_worker(process_group, env: dict[str, str], name: str, queues: str = "restore,ingest,maintenance"):
    return process_group.start_process(
        [*CLI, "worker", "--queues", queues, "--hostname", name, "--concurrency", "1", "--loglevel", "INFO"],
        env=env,
        ready=lambda proc: " ready." in proc.log_text(),
        timeout=120,
        name="worker",
    )


def _sample(text: str, name: str, **labels: str) -> float:
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    assert found, f"no sample {name} {labels}"
    return total


def test_full_flow_over_http(service_env, process_group, tmp_path):
    env = service_env
    _cli(env, "db", "upgrade")
    tenant_id = _cli(env, "tenants", "create", "bureau")
    key = _cli(env, "keys", "create", "bureau").splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", tenant_id) and key.startswith("pk_")

    _start_worker(process_group, env, "flow@test")
    process_group.start_process([*CLI, "beat", "--loglevel", "INFO", "--schedule-file", str(tmp_path / "beat")],
                                env=env, name="beat")
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}  # two uvicorn workers share the figures here
    process_group.start_process([*CLI, "api", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                ready=lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=120, name="api")

    auth = {"Authorization": f"Bearer {key}"}
    batch_reads = 0

    def count(response: httpx.Response) -> None:
        nonlocal batch_reads
        if response.request.method == "GET" and re.fullmatch(r"/v1/batches/[0-9a-f-]{36}", response.request.url.path):
            batch_reads += 1

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60,
                      event_hooks={"response": [count]}) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert all(c["ok"] for c in ready.json()["checks"].values())
        assert http.get("/v1/batches", headers={"Authorization": "Bearer nope"}).status_code == 401

        # References: stored, indexed by the ingest queue.
        ref = http.post("/v1/references", files={"files": ("sea.jpg", jpeg_bytes(96, 64, seed=7), "image/jpeg")})
        assert ref.status_code == 202, ref.text
        ref_id = ref.json()["references"][0]["id"]
        _poll(lambda: http.get(f"/v1/references/{ref_id}").json()["status"] == "indexed", 120, "reference index")

        # 1. Multipart photos, then submit; colours from the corpus (retrieval).
        b1 = http.post("/v1/batches", json={"name": "multipart", "options": {"reference_mode": "auto"}}).json()
        r = http.post(f"/v1/batches/{b1['id']}/photos", files=[
            ("files", ("m1.png", png_bytes(64, 48, seed=1), "image/png")),
            ("files", ("m2.jpg", jpeg_bytes(64, 48, seed=2), "image/jpeg")),
        ])
        assert r.status_code == 201, r.text
        assert http.post(f"/v1/batches/{b1['id']}/submit").status_code == 200

        # 2. One zip archive, unpacked by the ingest task; the client submits (the batch then waits for it).
        b2 = http.post("/v1/batches", json={"name": "zip", "options": {"reference_mode": "none"}}).json()
        archive = zip_bytes({"z/z1.png": png_bytes(64, 64, seed=3), "z/z2.png": png_bytes(80, 48, seed=4)})
        r = http.post(f"/v1/batches/{b2['id']}/archive", files={"file": ("album.zip", archive, "application/zip")})
        assert r.status_code == 202, r.text
        assert http.post(f"/v1/batches/{b2['id']}/submit").status_code == 200

        # 3. Presigned PUTs straight to the object store, then submit.
        b3 = http.post("/v1/batches", json={"name": "presigned", "options": {"reference_mode": "none",
                                                                          "output_format": "jpeg"}}).json()
        uploads = http.post(f"/v1/batches/{b3['id']}/uploads", json={"files": ["p1.png", "dir/p2.jpg"]})
        assert uploads.status_code == 200, uploads.text
        bodies = {"p1.png": png_bytes(48, 64, seed=5), "dir/p2.jpg": jpeg_bytes(64, 64, seed=6)}
        for item in uploads.json()["uploads"]:
            put = httpx.put(item["url"], content=bodies[item["name"]], timeout=30)
            assert put.status_code == 200, put.text
        submitted = http.post(f"/v1/batches/{b3['id']}/submit", json={"files": ["p1.png", "dir/p2.jpg"]})
        assert submitted.status_code == 200, submitted.text
        assert submitted.json()["registered"] == 2 and submitted.json()["rejected"] == []

        # Poll every batch to the end.
        batches = {}
        for batch_id in (b1["id"], b2["id"], b3["id"]):
            batches[batch_id] = _poll(
                lambda bid=batch_id: (b := http.get(f"/v1/batches/{bid}").json())["status"] == "finished" and b,
                FLOW_TIMEOUT_S, f"batch {batch_id} to finish")
        for batch in batches.values():
            assert batch["progress"]["counts"]["succeeded"] == 2, batch
            assert batch["progress"]["done_fraction"] == 1.0 and batch["progress"]["eta_s"] == 0.0

        # Results: a 307 to a presigned URL of the object store, which serves the restored image.
        sizes = {"m1.png": (64, 48), "m2.jpg": (64, 48), "z1.png": (64, 64), "z2.png": (80, 48),
                 "p1.png": (48, 64), "p2.jpg": (64, 64)}
        for batch_id, batch in batches.items():
            jobs = http.get(f"/v1/batches/{batch_id}/jobs").json()["items"]
            assert len(jobs) == 2
            for job in jobs:
                result = http.get(f"/v1/jobs/{job['id']}/result", follow_redirects=False)
                assert result.status_code == 307
                location = result.headers["location"]
                assert location.startswith(env["PIKFIX_S3_ENDPOINT_URL"])
                image = Image.open(io.BytesIO(httpx.get(location, timeout=30).content))
                assert image.size == sizes[job["input_name"].rsplit("/", 1)[-1]]
                assert image.format == ("JPEG" if batch["options"]["output_format"] == "jpeg" else "PNG")
            report = http.get(f"/v1/batches/{batch_id}/report")
            assert report.status_code == 200 and "<html" in report.text.lower()

        detail = http.get(f"/v1/jobs/{jobs[0]['id']}").json()
        assert detail["worker"] and detail["device"] == "cpu" and detail["metrics"]
        auto_job = http.get(f"/v1/batches/{b1['id']}/jobs").json()["items"][0]
        choice = http.get(f"/v1/jobs/{auto_job['id']}").json()["reference"]
        assert choice["source"] == "retrieval" and choice["reference_id"] == ref_id

        # Metrics: jobs from the database, queue depth from Redis, request latency by route template,
        # summed over both uvicorn worker processes.
        text = http.get("/metrics").text
        assert _sample(text, "pikfix_jobs", status="succeeded") == 6
        assert _sample(text, "pikfix_job_duration_seconds_count") == 6
        assert _sample(text, "pikfix_queue_depth", queue="restore") == 0
        # Every read of a batch is counted exactly once, whichever uvicorn process answered it.
        assert _sample(text, "pikfix_api_request_duration_seconds_count", route="/v1/batches/{batch_id}") == batch_reads
        assert batch_reads >= 3
        assert len(list(metrics_dir.glob("histogram_*.db"))) >= 1  # prometheus_client's multiprocess files
        assert b1["id"] not in text
        assert http.get("/v1/references").json()["items"][0]["id"] == ref_id


def test_flower_lists_the_worker_behind_basic_auth(tmp_path, fresh_redis_server, process_group):
    env = {
        **_base_env(),
        "PIKFIX_BROKER_URL": fresh_redis_server.url,
        "PIKFIX_DATA_DIR": str(tmp_path / "data"),
        "PIKFIX_FLOWER_BASIC_AUTH": "ops:s3cret",
        "PIKFIX_PRELOAD_MODEL": "0",
    }
    _start_worker(process_group, env, "flowercheck@test", queues="maintenance")
    port = free_port()
    process_group.start_process([*CLI, "flower", "--port", str(port), "--address", "127.0.0.1"], env=env,
                                cwd=tmp_path, ready=lambda: port_open(port), timeout=60, name="flower")
    url = f"http://127.0.0.1:{port}/api/workers"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=("ops", "wrong"), timeout=10).status_code == 401

    def listed():
        r = httpx.get(url, params={"refresh": "1"}, auth=("ops", "s3cret"), timeout=20)
        return r.status_code == 200 and "flowercheck@test" in r.json()

    _poll(listed, 60, "flower to list the worker", interval=1.0)
