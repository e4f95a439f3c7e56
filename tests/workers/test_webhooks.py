"""Batch-finished webhooks: a real local HTTP server receives the POST, and its signature verifies with
the shared secret (workers/webhooks.py, a task the finish_batches maintenance task sends). The task runs
eagerly here, with ``task_eager_propagates`` off so that Celery runs its retries (at once, the countdowns
its declared policy computed left out); tests/workers/test_worker_integration.py has a worker retry it."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from celery.app import autoretry
from helpers import photo_bytes

from db import repository as repo
from db.migrate import upgrade
from db.session import dispose_engine, session_scope
from service.netpolicy import Target
from service.settings import Settings
from storage import result_key
from workers.runtime import WorkerRuntime, set_runtime
from workers.webhooks import ATTEMPTS, SIGNATURE_HEADER, call_batch_webhook, post

SECRET = "bureau-shared-secret"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A bureau's endpoint: records every POST and answers with the next scripted status."""

    server: ThreadingHTTPServer
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pikfix"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec = box["receiver"]
            rec.received.append(Received(self.path, dict(self.headers.items()), body))
            status = rec.statuses.pop(0) if rec.statuses else 204
            self.send_response(status)
            if 300 <= status < 400:  # a redirect somewhere else on the same server
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    box["receiver"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box["receiver"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def runtime(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerRuntime]:
    monkeypatch.setitem(call_batch_webhook.app.conf, "task_eager_propagates", False)
    upgrade(sqlite_url)
    settings = Settings(
        database_url=sqlite_url,
        storage_url=str(tmp_path / "objects"),
        broker_url=None,
        webhook_secret=SECRET,
        webhook_allow_private=True,  # the receiver listens on loopback
    )
    rt = WorkerRuntime(settings, hostname="test-worker")
    set_runtime(rt)
    try:
        yield rt
    finally:
        set_runtime(None)
        dispose_engine(sqlite_url)


def finished_batch(rt: WorkerRuntime, webhook_url: str | None) -> tuple[str, str]:
    """A submitted batch with one succeeded and one failed job; returns (tenant id, batch id)."""
    with session_scope(rt.database_url) as s:
        tenant_id = repo.create_tenant(s, "bureau").id
        batch_id = repo.create_batch(
            s, tenant_id, "wedding 1952", {"reference_mode": "none"}, webhook_url=webhook_url
        ).id
        ok = repo.create_job(s, tenant_id, batch_id, f"{tenant_id}/originals/a.jpg", None, "a.jpg", 10).id
        bad = repo.create_job(s, tenant_id, batch_id, f"{tenant_id}/originals/b.jpg", None, "b.jpg", 10).id
        repo.submit_batch(s, tenant_id, batch_id)
    key = result_key(tenant_id, ok, ".png")
    rt.store.put_bytes(key, photo_bytes(32, 24, fmt="PNG"), content_type="image/png")
    with session_scope(rt.database_url) as s:
        claim = repo.claim_job(s, ok, rt.hostname, 5)
        assert repo.complete_job(
            s, ok, claim.attempt, key, width=32, height=24, metrics={"colourfulness": 1.0}
        )
        assert repo.fail_job(s, bad, None, "not_an_image", "a text file")
    return tenant_id, batch_id


def expected_signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(batch_id: str) -> bool:
    """The webhook task as a worker runs it (not called directly, which Celery never retries)."""
    return call_batch_webhook.apply(args=[batch_id], kwargs={"timeout_s": 5}).get()


def test_finish_batches_posts_a_signed_notification_once(runtime: WorkerRuntime, receiver: Receiver) -> None:
    from workers.maintenance import finish_batches

    tenant_id, batch_id = finished_batch(runtime, receiver.url)
    assert finish_batches() == [batch_id]
    with session_scope(runtime.database_url, readonly=True) as s:
        report = repo.get_batch(s, tenant_id, batch_id).report_key
    assert report and runtime.store.exists(report)  # the report is written before the bureau is told

    (hit,) = receiver.received
    assert hit.path == "/hooks/pikfix"
    assert hit.headers["Content-Type"] == "application/json"
    signature = hit.headers[SIGNATURE_HEADER]
    # The receiver's side of the contract: HMAC-SHA256 of the exact body bytes with the shared secret.
    assert hmac.compare_digest(signature, expected_signature(hit.body))
    assert not hmac.compare_digest(signature, expected_signature(hit.body, "another-secret"))
    assert not hmac.compare_digest(signature, expected_signature(hit.body + b" "))

    payload = json.loads(hit.body)
    assert payload["event"] == "batch.finished" and payload["batch_id"] == batch_id
    assert payload["status"] == "finished"
    assert payload["counts"]["succeeded"] == 1 and payload["counts"]["failed"] == 1
    assert payload["counts"]["queued"] == 0 and payload["counts"]["running"] == 0
    assert datetime.fromisoformat(payload["finished_at"]).tzinfo is not None

    # The batch is finished once, so the next sweep notifies nobody again.
    assert finish_batches() == []
    assert len(receiver.received) == 1


def test_failed_deliveries_are_retried_by_the_declared_policy_with_the_same_signed_body(
    runtime: WorkerRuntime, receiver: Receiver, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert call_batch_webhook.max_retries == ATTEMPTS - 1 == 2
    _, batch_id = finished_batch(runtime, receiver.url)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    receiver.statuses = [503, 502]  # the bureau's server hiccups twice
    countdowns = []

    def backoff(**kwargs: object) -> int:
        countdowns.append((kwargs, countdown := real_backoff(**kwargs)))
        return countdown

    real_backoff = autoretry.get_exponential_backoff_interval
    monkeypatch.setattr(autoretry, "get_exponential_backoff_interval", backoff)

    assert deliver(batch_id) is True
    first, second, third = receiver.received  # delivered once, on the third attempt
    assert first.body == second.body == third.body
    assert {hit.headers[SIGNATURE_HEADER] for hit in receiver.received} == {expected_signature(first.body)}
    assert "attempt 1: HTTP 503" in caplog.text and "attempt 2: HTTP 502" in caplog.text
    # Celery computed the countdowns (1 s, then 2 s, at most, each jittered), not a sleep in the task.
    assert [(k["retries"], k["factor"], k["maximum"], k["full_jitter"]) for k, _ in countdowns] == [
        (0, 1, 5, True), (1, 1, 5, True)
    ]
    assert 0 <= countdowns[0][1] <= 1 and 0 <= countdowns[1][1] <= 2


def test_run_eagerly_with_the_apps_settings_a_failed_attempt_is_the_last(
    runtime: WorkerRuntime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker (embedded, or the API without one): Celery cannot retry, and the caller sees no error."""
    monkeypatch.setitem(call_batch_webhook.app.conf, "task_eager_propagates", True)
    _, batch_id = finished_batch(runtime, receiver.url)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    receiver.statuses = [503]
    assert deliver(batch_id) is False
    assert len(receiver.received) == 1


def test_no_webhook_url_means_no_request(runtime: WorkerRuntime, receiver: Receiver) -> None:
    _, batch_id = finished_batch(runtime, None)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    assert deliver(batch_id) is False
    assert receiver.received == []


def test_internal_addresses_are_not_reached_unless_allowed(
    runtime: WorkerRuntime, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    _, batch_id = finished_batch(runtime, receiver.url)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    runtime.settings.webhook_allow_private = False  # the production default
    assert deliver(batch_id) is False
    assert receiver.received == []
    assert caplog.text.count("webhook address 127.0.0.1 is not a public address") == 1  # never retried


def test_redirects_are_not_followed(runtime: WorkerRuntime, receiver: Receiver) -> None:
    _, batch_id = finished_batch(runtime, receiver.url)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    receiver.statuses = [302, 303, 307]  # each would be followed by urllib's default opener
    assert deliver(batch_id) is False  # the attempts are spent
    assert [hit.path for hit in receiver.received] == ["/hooks/pikfix"] * ATTEMPTS


def test_unresolvable_hosts_are_retried_then_given_up(runtime: WorkerRuntime, caplog: pytest.LogCaptureFixture) -> None:
    _, batch_id = finished_batch(runtime, "http://no-such-host.invalid/hook")
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    assert deliver(batch_id) is False
    assert caplog.text.count("cannot resolve webhook host 'no-such-host.invalid'") == ATTEMPTS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``localhost`` (and 127.0.0.1), made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_receiver(certificate: tuple[Path, Path]) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    yield from _serve(context)


def test_https_goes_to_the_vetted_address_and_checks_the_certificate_name(
    runtime: WorkerRuntime, tls_receiver: Receiver, certificate: tuple[Path, Path]
) -> None:
    port = tls_receiver.server.server_address[1]
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    # The URL says "localhost"; the connection goes to the vetted 127.0.0.1; the certificate names localhost.
    target = Target("https", "localhost", port, ("127.0.0.1",), "/hooks/pikfix")
    assert post(target, b"{}", {"Content-Type": "application/json"}, 5, context=trusting) == 204
    (hit,) = tls_receiver.received
    assert hit.headers["Host"] == f"localhost:{port}" and hit.path == "/hooks/pikfix"
    # A certificate for another name is refused, even though the address is the same.
    with pytest.raises(ssl.SSLCertVerificationError):
        post(Target("https", "hooks.bureau.example", port, ("127.0.0.1",), "/x"), b"{}", {}, 5, context=trusting)
    # With the default trust store the self-signed receiver is never sent the body.
    _, batch_id = finished_batch(runtime, f"https://127.0.0.1:{port}/hooks/pikfix")
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    assert deliver(batch_id) is False
    assert len(tls_receiver.received) == 1
