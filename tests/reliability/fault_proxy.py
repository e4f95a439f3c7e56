"""A small fault-injecting proxy on loopback, put in front of a real server (moto's S3, PostgreSQL).

The reliability tests point a worker or an API at the proxy instead of the server and switch it, while
traffic flows, between pass-through and a fault: an HTTP error status (503, 500), a stall (the peer
waits for an answer that never comes, so only the client's timeout ends it), or a reset connection
(an RST half-way through a transfer). A fault can be limited to some requests: only PUT or only GET,
only paths containing a string, only the Nth matching request, the first N, every Kth, or a seeded
fraction, optionally capped at a number of hits.

Two layers:

- ``http=True`` (S3): each client connection carries exactly one request. The proxy reads the request
  head, decides, and on pass-through forwards the request with ``Connection: close`` so the server
  closes after its answer and the client opens a new connection (and so meets the next decision) for
  its next request. Injected errors carry an S3-style XML body, so boto3 sees what a real endpoint
  under load answers.
- ``http=False`` (any TCP service): the decision is made per connection (pass, stall, reset); method
  and path filters do not apply. A stall also freezes the relays of connections already open, as a
  hung server would.

Every request (or connection) is recorded with the action taken, so a test can assert figures such as
"3 GETs answered 503, then the job failed" rather than merely that something went wrong.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["pass", "status", "stall", "reset"]

_HEAD_LIMIT = 64 * 1024
_IO_TIMEOUT_S = 60.0
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_S3_CODES = {500: "InternalError", 503: "ServiceUnavailable", 504: "RequestTimeout"}


@dataclass(frozen=True)
class Fault:
    """What to do to matching requests; with no selector (nth, first, every, fraction) every match is hit.

    ``action``: ``status`` answers ``status`` at once; ``stall`` holds the connection open, silent, for
    ``stall_s`` seconds (or until the fault is cleared or the proxy closed); ``reset`` cuts the
    transfer half-way with an RST (mid-upload for a request with a body, mid-download otherwise).
    """

    action: Action = "status"
    status: int = 503
    methods: frozenset[str] | None = None
    path_contains: str | None = None
    nth: int | None = None
    first: int | None = None
    every: int | None = None
    fraction: float | None = None
    limit: int | None = None  # at most this many hits in all, whatever the selector says
    seed: int = 0
    stall_s: float = 300.0

    def __post_init__(self) -> None:
        if self.action not in ("pass", "status", "stall", "reset"):
            raise ValueError(f"unknown fault action {self.action!r}")
        if sum(x is not None for x in (self.nth, self.first, self.every, self.fraction)) > 1:
            raise ValueError("choose at most one of nth, first, every and fraction")
        if self.every is not None and self.every < 1:
            raise ValueError("every must be at least 1")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))

    def matches(self, method: str | None, path: str | None) -> bool:
        if self.methods is not None and (method or "").upper() not in self.methods:
            return False
        return self.path_contains is None or self.path_contains in (path or "")


PASS = Fault(action="pass")


@dataclass(frozen=True)
class Record:
    """One request (HTTP) or connection (TCP) seen by the proxy."""

    at: float
    method: str | None
    path: str | None
    action: Action


@dataclass
class _Armed:
    """The installed fault with its own counters, replaced as a whole by ``set_fault``."""

    fault: Fault
    released: threading.Event = field(default_factory=threading.Event)
    matched: int = 0
    hits: int = 0
    rng: random.Random = field(default_factory=random.Random)


class FaultProxy:
    """``FaultProxy(upstream_port).start()``; ``endpoint_url`` is what clients should use."""

    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", *, http: bool = True, port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.http = http
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed = _Armed(PASS)
        self._records: list[Record] = []
        self._open: set[socket.socket] = set()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        if self._thread is None:
            self._thread = threading.Thread(target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, release every stall and drop every open connection."""
        self._closing.set()
        with self._lock:
            self._armed.released.set()
            sockets = list(self._open)
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            _close(sock)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- control ------------------------------------------------------------------------------------

    def set_fault(self, fault: Fault) -> None:
        """Install ``fault`` from the next request on (counters start again; stalls of the old one end)."""
        armed = _Armed(fault)
        armed.rng.seed(fault.seed)
        with self._lock:
            old, self._armed = self._armed, armed
        old.released.set()

    def clear(self) -> None:
        """Back to pass-through."""
        self.set_fault(PASS)

    @property
    def fault(self) -> Fault:
        with self._lock:
            return self._armed.fault

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def counts(self, method: str | None = None, path_contains: str | None = None) -> Counter[str]:
        """How many requests got each action (optionally only ``method`` / paths containing a string)."""
        return Counter(
            r.action
            for r in self.records()
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in (r.path or ""))
        )

    def reset_records(self) -> None:
        with self._lock:
            self._records.clear()

    # -- decisions ----------------------------------------------------------------------------------

    def _decide(self, method: str | None, path: str | None) -> tuple[Action, _Armed]:
        with self._lock:
            armed = self._armed
            fault = armed.fault
            action: Action = "pass"
            if fault.action != "pass" and fault.matches(method, path):
                armed.matched += 1
                n = armed.matched
                if fault.nth is not None:
                    hit = n == fault.nth
                elif fault.first is not None:
                    hit = n <= fault.first
                elif fault.every is not None:
                    hit = n % fault.every == 0
                elif fault.fraction is not None:
                    hit = armed.rng.random() < fault.fraction
                else:
                    hit = True
                if hit and (fault.limit is None or armed.hits < fault.limit):
                    armed.hits += 1
                    action = fault.action
            self._records.append(Record(time.monotonic(), method, path, action))
        return action, armed

    # -- connections --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)  # wake up to notice close(): closing a socket does not end accept()
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setblocking(True)
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        # A database connection may idle in a pool for minutes: no timeout on plain TCP relays.
        client.settimeout(_IO_TIMEOUT_S if self.http else None)
        try:
            if self.http:
                self._serve_http(client)
            else:
                self._serve_tcp(client)
        except OSError:
            pass  # a peer hung up or timed out: that connection simply ends
        finally:
            _close(client)
            with self._lock:
                self._open.discard(client)

    def _serve_tcp(self, client: socket.socket) -> None:
        action, armed = self._decide(None, None)
        if action == "stall":
            self._stall(armed)
        elif action == "reset":
            _reset(client)
        elif action == "status":
            pass  # no protocol to answer in: just close
        else:
            self._pipe(client, b"")

    def _serve_http(self, client: socket.socket) -> None:
        head, rest = _read_head(client)
        if head is None:
            return
        request_line, headers = _parse_head(head)
        parts = request_line.split(" ")
        method, path = (parts[0].upper(), parts[1]) if len(parts) >= 2 else ("?", "?")
        action, armed = self._decide(method, path)
        length = _content_length(headers)
        if action == "status":
            status = armed.fault.status
            if "100-continue" not in headers.get("expect", "").lower():
                _drain_body(client, headers, rest)
            client.sendall(_error_response(status, method))
        elif action == "stall":
            self._stall(armed)
        elif action == "reset" and (length or headers.get("transfer-encoding")):
            # Mid-upload: take about half of the body, then cut the connection.
            target = max(1, (length or 2 * max(len(rest), 1)) // 2)
            got = len(rest)
            while got < target:
                chunk = client.recv(min(65536, target - got))
                if not chunk:
                    break
                got += len(chunk)
            _reset(client)
        else:
            cut = action == "reset"  # mid-download: forward the request, relay half the answer
            self._pipe(client, _with_connection_close(request_line, headers) + rest, cut_response=cut)

    def _stall(self, armed: _Armed) -> None:
        deadline = time.monotonic() + armed.fault.stall_s
        while not armed.released.is_set() and not self._closing.is_set() and time.monotonic() < deadline:
            armed.released.wait(0.1)

    def _pipe(self, client: socket.socket, first: bytes, cut_response: bool = False) -> None:
        upstream = socket.create_connection(self.upstream, timeout=_IO_TIMEOUT_S)
        upstream.settimeout(_IO_TIMEOUT_S if self.http else None)
        with self._lock:
            self._open.add(upstream)
        try:
            if first:
                upstream.sendall(first)
            if cut_response:
                # No pump reading the client here: a thread blocked in recv() would keep the socket
                # alive after close(), delaying the RST until that recv() timed out.
                answer = _read_all(upstream)
                client.sendall(answer[: max(1, len(answer) // 2)])
                _reset(client)
                return
            pump = threading.Thread(target=self._copy, args=(client, upstream), daemon=True)
            pump.start()
            self._copy(upstream, client)
            # The pump ends by itself once the client closes its side (or the caller closes the socket).
        finally:
            _close(upstream)
            with self._lock:
                self._open.discard(upstream)


    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        """Relay until ``src`` closes, then pass the end of stream on.

        In TCP mode a stall also freezes connections opened before it (a pooled database connection
        must meet the silent server too), until the fault is cleared.
        """
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self.http and not self._closing.is_set() and self.fault.action == "stall":
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


# --------------------------------------------------------------------------- socket helpers


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, as from a crashed load balancer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > _HEAD_LIMIT:
            return None, b""
        data = sock.recv(65536)
        if not data:
            return None, b""
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _content_length(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0


def _with_connection_close(request_line: str, headers: dict[str, str]) -> bytes:
    kept = [f"{k}: {v}" for k, v in headers.items() if k not in ("connection", "keep-alive", "proxy-connection")]
    return ("\r\n".join([request_line, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


def _drain_body(sock: socket.socket, headers: dict[str, str], rest: bytes) -> None:
    """Read the request body the client is sending, so it sees our answer rather than a broken pipe."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        buf = rest
        while not buf.endswith(b"0\r\n\r\n") and b"\r\n0\r\n" not in buf[-4096:]:
            data = sock.recv(65536)
            if not data:
                return
            buf = buf[-8192:] + data
        return
    remaining = _content_length(headers) - len(rest)
    while remaining > 0:
        data = sock.recv(min(65536, remaining))
        if not data:
            return
        remaining -= len(data)


def _error_response(status: int, method: str) -> bytes:
    code = _S3_CODES.get(status, "InternalError")
    body = (
        b"" if method == "HEAD"
        else (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by the fault proxy</Message>"
            "<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
    )
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


__all__ = ["PASS", "Action", "Fault", "FaultProxy", "Record"]
