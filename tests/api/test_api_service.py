"""Service routes and cross-cutting behaviour, in-process: health, readiness, metrics, OpenAPI, errors."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import jpeg_bytes, make_runtime, make_settings, png_bytes, tenant_with_key, zip_bytes
from fastapi.testclient import TestClient
from fixtures.processes import free_port

from api.app import create_app
from api.prometheus import UNMATCHED_ROUTE, queue_depths
from api.routers.health import CHECK_TIMEOUT_S
from db import repository as repo
from db.migrate import upgrade
from db.session import dispose_engine, session_scope
from workers.app import app as celery_app
from workers.app import configure


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"]


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung dependency."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@contextmanager
def app_with(tmp_path, shared_models, **overrides) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, shared_models.checkpoint, **overrides)
    app = create_app(settings, runtime=make_runtime(settings, shared_models))
    try:
        with TestClient(app) as client:
            yield client
    finally:
        dispose_engine(settings.resolved_database_url)
        configure(celery_app, make_settings(tmp_path, shared_models.checkpoint))  # back to eager tasks


# --------------------------------------------------------------------------- health


def test_healthz_needs_nothing(api):
    r = api.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_embedded_mode_is_ready(api):
    r = api.client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and set(body["checks"]) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in body["checks"].values())
    assert "eager" in body["checks"]["broker"]["detail"]


def test_readyz_names_every_failed_dependency(tmp_path, shared_models):
    dead = free_port()
    overrides = {
        "database_url": f"postgresql+psycopg://nobody@127.0.0.1:{dead}/none",
        "broker_url": f"redis://127.0.0.1:{dead}/0",
        "storage_url": "s3://no-bucket",
        "s3_endpoint_url": f"http://127.0.0.1:{dead}",
    }
    with app_with(tmp_path, shared_models, **overrides) as client:
        assert client.get("/healthz").status_code == 200  # liveness does not depend on them
        start = time.monotonic()
        r = client.get("/readyz")
        elapsed = time.monotonic() - start
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and body["error"]["code"] == "not_ready"
    assert sorted(body["error"]["details"]) == ["broker", "database", "storage"]
    assert not any(check["ok"] for check in body["checks"].values())
    assert elapsed < CHECK_TIMEOUT_S + 3


def test_readyz_does_not_hang_on_a_silent_broker(tmp_path, shared_models):
    with silent_server() as port, app_with(tmp_path, shared_models, broker_url=f"redis://127.0.0.1:{port}/0") as client:
        start = time.monotonic()
        r = client.get("/readyz")
        elapsed = time.monotonic() - start
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["storage"]["ok"] and not checks["broker"]["ok"]
    assert elapsed < CHECK_TIMEOUT_S + 2


def test_broker_outage(tmp_path, shared_models):
    """With the broker down nothing is marked sent that the broker did not take. A single upload is
    withdrawn and answered 503 for the client to retry; a batch's photos are accepted and wait unsent
    for the next dispatch; an archive is withdrawn and answered 503."""
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    tenant_id, key = tenant_with_key(url, "bureau")
    headers = {"Authorization": f"Bearer {key}"}
    with app_with(tmp_path, shared_models, broker_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        start = time.monotonic()
        r = client.post("/v1/jobs", headers=headers, files={"file": ("a.png", png_bytes(), "image/png")})
        assert error_of(r) == (503, "broker_unavailable") and r.headers["retry-after"]
        assert time.monotonic() - start < 20
        with session_scope(url) as s:
            assert sum(repo.jobs_by_status(s).values()) == 0
        r = client.post("/v1/references", headers=headers, files={"files": ("c.jpg", jpeg_bytes(), "image/jpeg")})
        assert error_of(r) == (503, "broker_unavailable") and r.headers["retry-after"]
        batch = client.post("/v1/batches", headers=headers, json={"name": "b"}).json()
        r = client.post(f"/v1/batches/{batch['id']}/photos", headers=headers,
                        files={"files": ("b.png", png_bytes(), "image/png")})
        assert r.status_code == 201, r.text
        with session_scope(url) as s:
            job = repo.get_job(s, tenant_id, r.json()["jobs"][0]["id"])
            assert job.status == "queued" and job.sent_at is None  # the next dispatch sends it
        r = client.post(f"/v1/batches/{batch['id']}/archive", headers=headers,
                        files={"file": ("a.zip", zip_bytes({"a.png": png_bytes()}), "application/zip")})
        assert error_of(r) == (503, "broker_unavailable")
        with session_scope(url) as s:
            assert repo.list_batch_archives(s, batch["id"]) == []


# --------------------------------------------------------------------------- metrics


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        got = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if series.split("{")[0] == name and all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name} {labels} in metrics")


def test_metrics_figures(api):
    job = api.client.post("/v1/jobs", headers=api.a, files={"file": ("a.png", png_bytes(), "image/png")}).json()
    api.client.get(f"/v1/jobs/{job['id']}", headers=api.a)
    api.client.get("/v1/no/such/route")
    r = api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _sample(text, "pikfix_jobs", status="succeeded") == 1
    assert _sample(text, "pikfix_jobs", status="queued") == 0
    assert _sample(text, "pikfix_job_duration_seconds_count") == 1
    assert _sample(text, "pikfix_job_duration_seconds_bucket", le="+Inf") == 1
    assert _sample(text, "pikfix_job_duration_seconds_sum") > 0
    # Request latency is labelled by the route template, never by the raw path with its ids.
    assert _sample(text, "pikfix_api_request_duration_seconds_count", route="/v1/jobs", status="202") == 1
    assert _sample(text, "pikfix_api_request_duration_seconds_count", route="/v1/jobs/{job_id}", status="200") == 1
    assert _sample(text, "pikfix_api_request_duration_seconds_count", route=UNMATCHED_ROUTE, status="404") == 1
    assert job["id"] not in text
    assert "pikfix_queue_depth" not in text  # no broker in embedded mode


def test_queue_depth_from_redis(fresh_redis_server, tmp_path, shared_models):
    redis_server = fresh_redis_server
    with redis_server.client() as r:
        r.rpush("restore", "a", "b")
        r.rpush("restore\x06\x163", "c")  # a message at another priority level still waits
        r.rpush("ingest", "d")
    assert queue_depths(redis_server.url, ["restore", "ingest", "maintenance"]) == {
        "restore": 3, "ingest": 1, "maintenance": 0}
    upgrade(f"sqlite:///{tmp_path / 'api.db'}")
    with app_with(tmp_path, shared_models, broker_url=redis_server.url) as client:
        text = client.get("/metrics").text
    assert _sample(text, "pikfix_queue_depth", queue="restore") == 3
    assert _sample(text, "pikfix_metrics_broker_error") == 0


# --------------------------------------------------------------------------- OpenAPI and errors


def test_openapi_and_docs(api):
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/jobs", "/v1/batches/{batch_id}/photos", "/v1/references/{reference_id}", "/healthz",
            "/readyz", "/metrics"} <= set(paths)
    assert all(p.startswith("/v1/") for p in paths if p not in ("/healthz", "/readyz", "/metrics"))
    upload = paths["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"] and upload["properties"]["file"]["format"] == "binary"
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert "401" in paths["/v1/jobs/{job_id}"]["get"]["responses"]
    docs = api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_framework_errors_use_the_error_shape(api):
    assert error_of(api.client.get("/v1/nothing-here")) == (404, "not_found")
    assert error_of(api.client.delete("/v1/batches", headers=api.a)) == (405, "method_not_allowed")
    r = api.client.post("/v1/batches", headers={**api.a, "Content-Length": str(10**12)}, content=b"{}")
    assert error_of(r) == (413, "request_too_large")


def test_unexpected_errors_are_500_without_details(api):
    def boom() -> None:
        raise RuntimeError("secret internals")

    api.app.add_api_route("/boom", boom)
    with TestClient(api.app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert error_of(r) == (500, "internal_error")
    assert "secret" not in r.text


def test_405_allow_lists_exactly_the_methods_the_path_takes(api):
    """One path is often served by several routes (``GET`` and ``DELETE /v1/references/{id}``); a 405's
    ``Allow`` names every method that path takes, no more and no fewer."""
    spec = api.client.get("/openapi.json").json()
    paths = [*spec["paths"], "/docs", "/openapi.json", "/docs/assets/{name}"]
    probes = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    checked = 0
    for template in paths:
        url = template.replace("{name}", "swagger-ui.css")
        for param in ("job_id", "batch_id", "reference_id"):
            url = url.replace("{" + param + "}", "00000000-0000-4000-8000-000000000000")
        answers = {m: api.client.request(m, url, headers=api.a) for m in probes}
        taken = {m for m, r in answers.items() if r.status_code != 405}
        if template in spec["paths"]:
            assert {m.upper() for m in spec["paths"][template]} <= taken, template
        for method, r in answers.items():
            if r.status_code == 405:
                if method != "HEAD":  # a HEAD answer has no body
                    assert error_of(r) == (405, "method_not_allowed")
                allowed = {m.strip() for m in r.headers["allow"].split(",")}
                assert allowed == taken, (method, template, r.headers["allow"])
                checked += 1
    assert checked > 50


def test_docs_load_swagger_ui_from_this_server_only(api):
    """``/docs`` on an offline host: the page and every file it loads come from the API itself."""
    page = api.client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert len(urls) >= 4
    external = [u for u in urls if "//" in u or not u.startswith("/")]
    assert not external, external
    assert "validatorUrl" in page.text  # no badge fetched from the public validator either
    for url in urls:
        r = api.client.get(url)
        assert r.status_code == 200 and r.content, url
    js = api.client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith("text/javascript") and len(js.content) > 500_000
    assert "swagger" in api.client.get("/docs/assets/swagger-ui.css").text.lower()
    assert error_of(api.client.get("/docs/assets/..%2Fpyproject.toml")) == (404, "not_found")
    assert error_of(api.client.get("/docs/assets/index.html")) == (404, "not_found")
