"""HTTP with retries: backoff with full jitter on 429, 5xx, timeouts and dropped connections,
honouring ``Retry-After``. Two connection pools: the API's (with the key) and the object store's
(presigned URLs carry their own signature and must never see the API key)."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from pikfix_client import __version__
from pikfix_client.errors import ApiError, TransferError

log = logging.getLogger("pikfix_client")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` tries in all, waits drawn from [0, min(cap, base * 2**n)]."""

    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 300.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


def retry_after_s(response: httpx.Response, limit: float) -> float | None:
    """The wait ``Retry-After`` asks for (seconds or an HTTP date), capped at ``limit``; None if absent."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return min(max(seconds, 0.0), limit)


def with_retries(send: Callable[[], httpx.Response], policy: RetryPolicy, what: str) -> httpx.Response:
    """``send()`` until it answers something other than a retryable status; the last answer is returned
    (the caller judges it), or :class:`TransferError` when the connection failed on the last try."""
    for attempt in range(policy.attempts):
        last = attempt + 1 == policy.attempts
        try:
            response = send()
        except RETRY_EXCEPTIONS as exc:
            if last:
                raise TransferError(f"{what}: {type(exc).__name__}: {exc or 'no answer'} "
                                    f"(gave up after {policy.attempts} tries)") from exc
            wait = policy.backoff(attempt)
            log.debug("%s: %s; retrying in %.1fs", what, type(exc).__name__, wait)
        else:
            if response.status_code not in RETRY_STATUSES or last:
                return response
            wait = retry_after_s(response, policy.max_retry_after_s)
            wait = policy.backoff(attempt) if wait is None else wait
            log.debug("%s: HTTP %s; retrying in %.1fs", what, response.status_code, wait)
            response.close()
        time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def api_error(response: httpx.Response, what: str) -> ApiError:
    """The API's ``{"error": {code, message, details}}`` answer as an exception (any other body too)."""
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error["code"]), str(error["message"]), error.get("details"), what)
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().replace("\n", " ")[:300] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", text, None, what)


class Http:
    """The API (``request``) and the object store (``put``/``stream``), each with retries."""

    def __init__(self, url: str, key: str, *, timeout: float = 60.0, policy: RetryPolicy | None = None,
                 connections: int = 32) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the API URL must start with http:// or https://, got {url!r}")
        if not key:
            raise ValueError("an API key is needed (--key or PIKFIX_API_KEY)")
        self.url = url.rstrip("/")
        self.policy = policy or RetryPolicy()
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        agent = {"User-Agent": f"pikfix-client/{__version__}"}
        self.api = httpx.Client(base_url=self.url, headers={**agent, "Authorization": f"Bearer {key}"},
                                timeout=httpx.Timeout(timeout, connect=10.0), limits=limits)
        self.store = httpx.Client(headers=agent, timeout=httpx.Timeout(max(timeout, 120.0), connect=10.0),
                                  limits=limits)

    def close(self) -> None:
        self.api.close()
        self.store.close()

    def request(self, method: str, path: str, what: str, *, timeout: float | None = None,
                **kwargs: Any) -> httpx.Response:
        """An API call with retries; an error answer raises :class:`ApiError`."""
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=10.0)
        response = with_retries(lambda: self.api.request(method, path, **kwargs), self.policy, what)
        if response.status_code >= 400:
            raise api_error(response, what)
        return response

    def json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        return self.request(method, path, what, **kwargs).json()

    def put(self, url: str, body: bytes, what: str) -> httpx.Response:
        """PUT ``body`` to a presigned URL; the store's answer is returned as is after retries."""
        return with_retries(lambda: self.store.put(url, content=body), self.policy, what)


@dataclass(frozen=True)
class Downloaded:
    """A GET's outcome: the body written to the file (``sha256``, ``size``) or a redirect's ``location``."""

    headers: httpx.Headers
    sha256: str | None = None
    size: int = 0
    location: str | None = None


def download(client: httpx.Client, url: str, dest: Any, what: str, policy: RetryPolicy,
             store: bool = False) -> Downloaded:
    """Stream ``url`` into the file ``dest`` (hashing on the way) with retries; a redirect is returned,
    not followed, so the API key never travels to the object store."""
    import hashlib

    for attempt in range(policy.attempts):
        last = attempt + 1 == policy.attempts
        try:
            with client.stream("GET", url) as response:
                if response.is_redirect:
                    return Downloaded(response.headers, location=response.headers["location"])
                if response.status_code in RETRY_STATUSES and not last:
                    wait = retry_after_s(response, policy.max_retry_after_s)
                    wait = policy.backoff(attempt) if wait is None else wait
                elif response.status_code >= 400:
                    response.read()
                    if store:
                        raise TransferError(f"{what}: the object store answered HTTP {response.status_code}")
                    raise api_error(response, what)
                else:
                    digest, size = hashlib.sha256(), 0
                    with open(dest, "wb") as f:
                        for block in response.iter_bytes(1024 * 1024):
                            f.write(block)
                            digest.update(block)
                            size += len(block)
                    return Downloaded(response.headers, digest.hexdigest(), size)
        except RETRY_EXCEPTIONS as exc:
            if last:
                raise TransferError(f"{what}: {type(exc).__name__}: {exc or 'no answer'} "
                                    f"(gave up after {policy.attempts} tries)") from exc
            wait = policy.backoff(attempt)
        time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
