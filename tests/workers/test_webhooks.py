"""Batch-finished webhooks: a real local HTTP server receives the POST, and its signature verifies with
the shared secret (workers/webhooks.py, called from the finish_batches maintenance task)."""

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
from helpers import photo_bytes

from db import repository as repo
from db.migrate import upgrade
from db.session import dispose_engine, session_scope
from service.netpolicy import Target
from service.settings import Settings
from storage import result_key
from workers.runtime import WorkerRuntime, set_runtime
from workers.webhooks import SIGNATURE_HEADER, call_batch_webhook, post

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
def runtime(sqlite_url: str, tmp_path: Path) -> Iterator[WorkerRuntime]:
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


def test_a_failed_delivery_is_retried_with_the_same_signed_body(
    runtime: WorkerRuntime, receiver: Receiver
) -> None:
    _, batch_id = finished_batch(runtime, receiver.url)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    receiver.statuses = [503]  # the bureau's server hiccups once

    assert call_batch_webhook(runtime, batch_id, attempts=3, timeout_s=5) is True
    first, second = receiver.received
    assert first.body == second.body
    assert (
        first.headers[SIGNATURE_HEADER] == second.headers[SIGNATURE_HEADER] == expected_signature(first.body)
    )


def test_no_webhook_url_means_no_request(runtime: WorkerRuntime, receiver: Receiver) -> None:
    _, batch_id = finished_batch(runtime, None)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    assert call_batch_webhook(runtime, batch_id) is False
    assert receiver.received == []


def test_internal_addresses_are_not_reached_unless_allowed(
    runtime: WorkerRuntime, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    _, batch_id = finished_batch(runtime, receiver.url)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    runtime.settings.webhook_allow_private = False  # the production default
    assert call_batch_webhook(runtime, batch_id, attempts=2, timeout_s=5) is False
    assert receiver.received == []
    assert "webhook address 127.0.0.1 is not a public address" in caplog.text


def test_redirects_are_not_followed(runtime: WorkerRuntime, receiver: Receiver) -> None:
    _, batch_id = finished_batch(runtime, receiver.url)
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    receiver.statuses = [302, 303]  # both would be followed (as GET) by urllib's default opener
    assert call_batch_webhook(runtime, batch_id, attempts=2, timeout_s=5) is False
    assert [hit.path for hit in receiver.received] == ["/hooks/pikfix", "/hooks/pikfix"]


def test_unresolvable_hosts_are_retried_then_given_up(runtime: WorkerRuntime, caplog: pytest.LogCaptureFixture) -> None:
    _, batch_id = finished_batch(runtime, "http://no-such-host.invalid/hook")
    with session_scope(runtime.database_url) as s:
        repo.finish_batches(s)
    assert call_batch_webhook(runtime, batch_id, attempts=2, timeout_s=5) is False
    assert caplog.text.count("cannot resolve webhook host 'no-such-host.invalid'") == 2


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
    assert call_batch_webhook(runtime, batch_id, attempts=1, timeout_s=5) is False
    assert len(tls_receiver.received) == 1
