"""Batch-finished webhooks, signed so the bureau can trust them.

The body is JSON; ``X-Pikfix-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes with
the service's webhook secret. Delivery is best effort with a short timeout and a few attempts: the batch
status stays pollable either way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.request

from db import repository as repo
from db.session import session_scope

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pikfix-Signature"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def call_batch_webhook(runtime, batch_id: str, attempts: int = 3, timeout_s: float = 5.0) -> bool:
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
    for attempt in range(attempts):
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - tenant's own URL
                if 200 <= response.status < 300:
                    return True
        except OSError as exc:
            log.warning("webhook for batch %s attempt %d failed: %s", batch_id, attempt + 1, exc)
        if attempt + 1 < attempts:
            time.sleep(min(2**attempt, 5))
    return False
