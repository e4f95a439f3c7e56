"""The fault proxy itself, and the object store behind it: ``storage.S3Store`` talking to moto's
real S3 server through :class:`FaultProxy`.

These run in-process and in seconds, with the store's timeouts set short, which the worker settings do
not allow yet (see docs/reliability.md): a stalled endpoint must become ``StorageUnavailable`` within
``max_attempts * read_timeout`` plus backoff, a reset mid-upload must leave no object behind, a reset
mid-download must raise rather than hand back half a photo, and 5xx answers are retried a bounded
number of times. Every figure is counted by the proxy, request by request.
"""

from __future__ import annotations

import socket
import time

import pytest
from fault_proxy import Fault, FaultProxy
from rel_support import photo_bytes, record_figures

from storage import ObjectNotFound, StorageUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = "t1/originals/photo.jpg"


@pytest.fixture
def proxy(moto_server):
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    with FaultProxy(port) as p:
        yield p


def _store(s3_bucket, proxy: FaultProxy, **options):
    """An S3Store on the test bucket whose every request goes through the proxy."""
    from storage import S3Store

    opts = {"connect_timeout": 1.0, "read_timeout": 1.0, "max_attempts": 3, **options}
    return S3Store(
        s3_bucket.bucket,
        endpoint_url=proxy.endpoint_url,
        region="us-east-1",
        access_key="testing",
        secret_key="testing",
        **opts,
    )


def test_pass_through_is_transparent_and_counted(s3_bucket, proxy) -> None:
    store = _store(s3_bucket, proxy)
    data = photo_bytes(64, 48, seed=1)
    store.put_bytes(KEY, data)
    assert store.get_bytes(KEY) == data
    assert store.list_keys("t1/") == [KEY]
    assert store.exists(KEY) and not store.exists("t1/originals/none.jpg")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("t1/originals/none.jpg")
    counts = proxy.counts()
    assert set(counts) == {"pass"} and counts["pass"] == 6
    assert proxy.counts("PUT")["pass"] == 1 and proxy.counts("GET")["pass"] == 3


def test_503_for_the_first_requests_is_retried_by_the_client(s3_bucket, proxy) -> None:
    store = _store(s3_bucket, proxy, max_attempts=3)
    direct = s3_bucket.store()
    direct.put_bytes(KEY, b"\xff\xd8payload")
    proxy.set_fault(Fault("status", 503, methods={"GET"}, first=2))
    assert store.get_bytes(KEY) == b"\xff\xd8payload"
    assert proxy.counts("GET") == {"status": 2, "pass": 1}


def test_503_on_every_get_fails_after_exactly_max_attempts(s3_bucket, proxy) -> None:
    store = _store(s3_bucket, proxy, max_attempts=3)
    s3_bucket.store().put_bytes(KEY, b"\xff\xd8payload")
    proxy.set_fault(Fault("status", 503, methods={"GET"}))
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="ServiceUnavailable|503"):
        store.get_bytes(KEY)
    elapsed = time.monotonic() - start
    record_figures("s3_store_503", get_requests=proxy.counts("GET")["status"], elapsed_s=elapsed)
    assert proxy.counts("GET") == {"status": 3}
    assert elapsed < 15


def test_500_on_put_leaves_nothing_behind(s3_bucket, proxy) -> None:
    store = _store(s3_bucket, proxy, max_attempts=2)
    proxy.set_fault(Fault("status", 500, methods={"PUT"}))
    with pytest.raises(StorageUnavailable, match="InternalError|500"):
        store.put_bytes(KEY, photo_bytes(64, 48))
    assert proxy.counts("PUT") == {"status": 2}
    assert not s3_bucket.store().exists(KEY)


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_a_stalled_endpoint_times_out_within_the_budget(s3_bucket, proxy, method: str) -> None:
    store = _store(s3_bucket, proxy, read_timeout=1.0, max_attempts=2)
    data = photo_bytes(64, 48, seed=2)
    if method == "GET":
        s3_bucket.store().put_bytes(KEY, data)
    proxy.set_fault(Fault("stall", methods={method}, stall_s=60))
    start = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.get_bytes(KEY) if method == "GET" else store.put_bytes(KEY, data)
    elapsed = time.monotonic() - start
    record_figures(f"s3_store_stall_{method.lower()}", requests=proxy.counts(method)["stall"], elapsed_s=elapsed)
    assert proxy.counts(method) == {"stall": 2}
    # Two attempts of one second each plus the client's backoff: bounded, nowhere near the 60 s stall.
    assert elapsed < 10
    if method == "PUT":
        assert not s3_bucket.store().exists(KEY)
    proxy.clear()
    assert (store.get_bytes(KEY) if method == "GET" else store.put_bytes(KEY, data)) in (data, None)


def test_reset_mid_upload_leaves_no_object(s3_bucket, proxy) -> None:
    store = _store(s3_bucket, proxy, max_attempts=1)
    data = bytes(range(256)) * 8192  # 2 MiB: the connection is cut about half-way through the body
    proxy.set_fault(Fault("reset", methods={"PUT"}))
    with pytest.raises(StorageUnavailable):
        store.put_bytes(KEY, data)
    assert proxy.counts("PUT") == {"reset": 1}
    assert not s3_bucket.store().exists(KEY), "a cut upload must not leave a partial object"


def test_reset_mid_download_raises_instead_of_returning_half(s3_bucket, proxy) -> None:
    store = _store(s3_bucket, proxy, max_attempts=1)
    data = bytes(range(256)) * 4096  # 1 MiB
    s3_bucket.store().put_bytes(KEY, data)
    proxy.set_fault(Fault("reset", methods={"GET"}))
    start = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.get_bytes(KEY)
    assert time.monotonic() - start < 5, "the reset must reach the client at once, not at its read timeout"
    assert proxy.counts("GET") == {"reset": 1}


def test_selectors_nth_and_fraction(s3_bucket, proxy) -> None:
    store = _store(s3_bucket, proxy, max_attempts=1)
    proxy.set_fault(Fault("status", 503, methods={"PUT"}, nth=3))
    outcomes = []
    for i in range(5):
        try:
            store.put_bytes(f"t1/n/{i}", b"x")
            outcomes.append("ok")
        except StorageUnavailable:
            outcomes.append("503")
    assert outcomes == ["ok", "ok", "503", "ok", "ok"]

    proxy.set_fault(Fault("status", 503, methods={"GET"}, fraction=0.5, seed=7))
    failures = 0
    for _ in range(40):
        try:
            store.get_bytes("t1/n/0")
        except StorageUnavailable:
            failures += 1
    assert 10 <= failures <= 30 and proxy.counts("GET")["status"] == failures
    assert proxy.counts("PUT") == {"pass": 4, "status": 1}  # PUTs were never touched by the GET fault
    with pytest.raises(ValueError):
        Fault("status", nth=1, first=2)


def test_tcp_mode_stalls_and_resets_connections(moto_server) -> None:
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with FaultProxy(port, http=False) as tcp:
        with socket.create_connection(("127.0.0.1", tcp.port), timeout=5) as conn:
            conn.sendall(request)
            assert conn.recv(12).startswith(b"HTTP/1.1 200")
        tcp.set_fault(Fault("stall", stall_s=30))
        with socket.create_connection(("127.0.0.1", tcp.port), timeout=0.5) as conn:
            conn.sendall(request)
            with pytest.raises(TimeoutError):
                conn.recv(12)
        tcp.set_fault(Fault("reset"))
        with (
            pytest.raises((ConnectionResetError, BrokenPipeError)),
            socket.create_connection(("127.0.0.1", tcp.port), timeout=5) as conn,
        ):
            time.sleep(0.1)
            conn.sendall(request)
            if not conn.recv(12):
                raise ConnectionResetError("closed without an answer")
        assert [r.action for r in tcp.records()] == ["pass", "stall", "reset"]
