"""Batch-finished webhooks, signed so the bureau can trust them.

The body is JSON; ``X-Pikfix-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes with
the service's webhook secret. Delivery is best effort with a short timeout and a few attempts, retried by
Celery with backoff and jitter (no worker sleeps between them): the batch status stays pollable either way.

Only public addresses are reached unless ``webhook_allow_private`` is set (``service.netpolicy``): the
host is resolved and vetted before every attempt, the connection goes to the vetted address (TLS still
verifies the certificate against the URL's host name), and redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl

from db import repository as repo
from db.session import session_scope
from service.netpolicy import Target, WebhookResolutionError, WebhookTargetError, resolve_target
from workers.app import app
from workers.runtime import get_runtime

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pikfix-Signature"
MAX_RESPONSE_BYTES = 64 * 1024
ATTEMPTS = 3


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class NotDelivered(Exception):
    """The receiver answered, but not with a 2xx: worth another attempt, as a network error is."""


# Retried by Celery, not in a sleep loop: ATTEMPTS in all, at most 1 s then 2 s apart (jittered), as the
# sleeps were; a failed DNS look-up too. Each attempt builds the same signed body from the finished batch.
@app.task(name="pikfix.batch_webhook", bind=True, max_retries=ATTEMPTS - 1,
          autoretry_for=(NotDelivered, WebhookResolutionError, OSError, http.client.HTTPException),
          retry_backoff=True, retry_backoff_max=5, retry_jitter=True)
def call_batch_webhook(self, batch_id: str, timeout_s: float = 5.0) -> bool:
    """POST the batch's notification; True once delivered, False when not sent or out of attempts."""
    runtime = get_runtime()
    with session_scope(runtime.database_url) as s:
        batch = repo.get_batch_any_tenant(s, batch_id)
        url = batch.webhook_url
        if not url:
            return False
        payload = {
            "event": "batch.finished",
            "batch_id": batch.id,
            "status": batch.status,
            "counts": repo.batch_status_counts(s, batch.id),
            "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
        }
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, runtime.settings.webhook_secret)}
    try:
        status = post(resolve_target(url, runtime.settings.webhook_allow_private), body, headers, timeout_s)
        if not 200 <= status < 300:
            raise NotDelivered(f"HTTP {status}")
    except self.autoretry_for as exc:
        log.warning("webhook for batch %s attempt %d: %s", batch_id, self.request.retries + 1, exc)
        # Run eagerly (no broker) with task_eager_propagates, a retry would reach the caller as an error.
        eager_only = self.request.is_eager and self.app.conf.task_eager_propagates
        if self.request.retries < self.max_retries and not eager_only:
            raise  # Celery retries it (autoretry_for)
        return False  # best effort: the batch's status stays pollable
    except WebhookTargetError as exc:  # a policy refusal: no attempt will change it
        log.warning("webhook for batch %s not sent: %s", batch_id, exc)
        return False
    return True


def _connect(addresses: tuple[str, ...], port: int, timeout: float) -> socket.socket:
    """The first vetted address that accepts a connection (as ``socket.create_connection`` tries the
    resolver's answers in order, but never a name that could resolve differently now)."""
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            error = exc
    raise error or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the vetted addresses while the request names the URL's host."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._addresses = target.addresses

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As the HTTP one; the certificate is still verified against the URL's host name."""

    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext | None = None) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context or ssl.create_default_context())
        self._addresses = target.addresses

    def connect(self) -> None:
        sock = _connect(self._addresses, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(
    target: Target, body: bytes, headers: dict[str, str], timeout_s: float, context: ssl.SSLContext | None = None
) -> int:
    """POST ``body`` to a vetted target; returns the HTTP status (a 3xx is returned, not followed).

    At most ``MAX_RESPONSE_BYTES`` of the answer are read: a receiver cannot hold a worker by
    streaming an endless body. ``context`` replaces the default TLS trust store (tests, private CAs).
    """
    if target.scheme == "https":
        connection: http.client.HTTPConnection = _PinnedHTTPSConnection(target, timeout_s, context)
    else:
        connection = _PinnedHTTPConnection(target, timeout_s)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        return response.status
    finally:
        connection.close()
