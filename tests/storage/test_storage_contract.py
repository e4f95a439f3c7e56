"""One contract, two backends: LocalStore on a folder and S3Store against moto's S3 server over HTTP.

Every behaviour the workers and the API rely on is checked on both, so the embedded mode and the
distributed mode cannot drift apart. Nothing is patched: S3 calls cross a real socket.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from storage import (
    InvalidKey,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StorageError,
    StorageUnavailable,
    index_key,
    open_store,
    original_key,
    put_content_addressed,
    reference_key,
    report_key,
    result_key,
    upload_key,
)

MiB = 1024 * 1024
TENANT = "acme"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same store contract on each backend; multipart lowered to S3's minimum part size (5 MiB)."""
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    bucket = request.getfixturevalue("s3_bucket")
    return bucket.store(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)


def payload(n: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (a hash chain), cheap even for several MiB."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


class ReadOnlyStream(io.RawIOBase):
    """A forward-only reader, like a request body: no seek, no tell, no len."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._buf = io.BytesIO(data)
        self._fail_after = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._fail_after is not None and self._buf.tell() >= self._fail_after:
            raise ConnectionResetError("client went away mid-upload")
        chunk = self._buf.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


# --------------------------------------------------------------------------- contract


def test_store_satisfies_the_protocol(store):
    assert isinstance(store, ObjectStore)
    assert store.ping() is True
    store.ensure_bucket()  # idempotent on an existing bucket/folder
    assert store.ping() is True


def test_put_and_get_bytes_and_overwrite(store):
    key = result_key(TENANT, 17, "png")
    assert not store.exists(key)
    store.put_bytes(key, b"\x89PNG first", content_type="image/png")
    assert store.get_bytes(key) == b"\x89PNG first"
    assert store.size(key) == len(b"\x89PNG first")
    store.put_bytes(key, b"second, longer payload")  # a retried job overwrites, never duplicates
    assert store.get_bytes(key) == b"second, longer payload"
    assert store.list_keys(f"{TENANT}/results/") == [key]
    store.put_bytes("empty.bin", b"")
    assert store.get_bytes("empty.bin") == b"" and store.size("empty.bin") == 0


def test_put_file_large_enough_for_multipart(store, tmp_path):
    data = payload(11 * MiB + 123, seed=1)  # three 5 MiB parts on S3
    src = tmp_path / "scan.tif"
    src.write_bytes(data)
    key = original_key(TENANT, hashlib.sha256(data).hexdigest(), ".tif")
    store.put_file(key, src)
    assert store.size(key) == len(data)
    dest = tmp_path / "out" / "copy.tif"
    store.download_file(key, dest)
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["copy.tif"]  # no partial file left behind
    if isinstance(store, S3Store):
        etag = store.client.head_object(Bucket=store.bucket, Key=key)["ETag"].strip('"')
        assert etag.endswith("-3"), f"expected a 3-part multipart upload, got ETag {etag}"
        assert store.client.head_object(Bucket=store.bucket, Key=key)["ContentType"] == "image/tiff"


def test_put_stream_from_a_forward_only_reader_and_open_stream(store):
    data = payload(6 * MiB + 7, seed=2)  # above the multipart threshold, length unknown to the store
    key = upload_key(TENANT, "b1", "archive.zip")
    store.put_stream(key, ReadOnlyStream(data))
    assert store.size(key) == len(data)
    digest = hashlib.sha256()
    with store.open_stream(key) as stream:
        first = stream.read(1000)
        digest.update(first)
        while chunk := stream.read(MiB):
            digest.update(chunk)
    assert len(first) == 1000
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    small = b"small body"
    store.put_stream("s/small.bin", io.BytesIO(small))
    with store.open_stream("s/small.bin") as stream:
        assert stream.read() == small


def test_failed_stream_upload_leaves_no_object(store):
    key = "acme/uploads/b2/broken.zip"
    with pytest.raises((ConnectionResetError, StorageError)):
        store.put_stream(key, ReadOnlyStream(payload(6 * MiB, seed=3), fail_after=MiB))
    assert not store.exists(key)
    assert store.list_keys("acme/uploads/") == []
    if isinstance(store, LocalStore):
        assert list((store.root / ".tmp").iterdir()) == []


def test_exists_size_delete_and_list(store):
    keys = [
        "acme/originals/" + "a" * 64 + ".jpg",
        "acme/originals/" + "b" * 64 + ".png",
        "acme/results/1/restored.png",
        "acme/results/10/restored.png",
        "beta/originals/" + "c" * 64 + ".jpg",
    ]
    for i, key in enumerate(reversed(keys)):
        store.put_bytes(key, bytes([i]) * (i + 1))
    assert store.list_keys() == sorted(keys)
    assert store.list_keys("acme/") == sorted(keys[:4])
    assert store.list_keys("acme/results/1") == keys[2:4]  # a plain string prefix, as on S3
    assert store.list_keys("acme/results/1/") == [keys[2]]
    assert store.list_keys("nobody/") == []
    assert store.size(keys[0]) == 5
    assert store.exists(keys[0]) and not store.exists("acme/originals")  # a "folder" is not an object
    store.delete(keys[0])
    assert not store.exists(keys[0])
    store.delete(keys[0])  # deleting twice is fine (idempotent, like S3)
    assert store.list_keys("acme/originals/") == [keys[1]]


def test_missing_key_raises_object_not_found(store, tmp_path):
    missing = "acme/results/404/restored.png"
    for call in (
        lambda: store.get_bytes(missing),
        lambda: store.open_stream(missing),
        lambda: store.size(missing),
        lambda: store.download_file(missing, tmp_path / "dl" / "x.png"),
    ):
        with pytest.raises(ObjectNotFound) as info:
            call()
        assert isinstance(info.value, KeyError)
        assert info.value.key == missing
        assert missing in str(info.value)
    assert not store.exists(missing)
    assert not (tmp_path / "dl" / "x.png").exists()


def test_content_addressing_stores_the_same_photo_once(store, tmp_path):
    photo = payload(4000, seed=4)
    key1, sha1, created1 = put_content_addressed(store, TENANT, photo, ".JPG")
    key2, sha2, created2 = put_content_addressed(store, TENANT, photo, "jpeg")
    path = tmp_path / "same.jpg"
    path.write_bytes(photo)
    key3, sha3, created3 = put_content_addressed(store, TENANT, path, ".jpg")
    assert sha1 == sha2 == sha3 == hashlib.sha256(photo).hexdigest()
    assert key1 == key2 == key3 == f"{TENANT}/originals/{sha1}.jpg"
    assert (created1, created2, created3) == (True, False, False)
    assert store.list_keys(f"{TENANT}/originals/") == [key1]
    assert store.get_bytes(key1) == photo
    ref_key, _, ref_created = put_content_addressed(store, TENANT, path, "jpg", kind="reference")
    assert ref_key == f"{TENANT}/references/{sha1}.jpg" and ref_created
    other_key, _, other_created = put_content_addressed(store, "other", photo, "jpg")
    assert other_key != key1 and other_created  # tenants never share objects


@pytest.mark.parametrize(
    "bad",
    [
        "../escape",
        "acme/../../etc/passwd",
        "/etc/passwd",
        "a\\b",
        "a//b",
        "a/./b",
        "",
        "dir/",
        ".tmp/x",
        "a\x00b",
    ],
)
def test_bad_keys_are_refused(store, bad, tmp_path):
    for call in (
        lambda: store.put_bytes(bad, b"x"),
        lambda: store.get_bytes(bad),
        lambda: store.exists(bad),
        lambda: store.delete(bad),
        lambda: store.presigned_get_url(bad),
    ):
        with pytest.raises(InvalidKey):
            call()
    assert issubclass(InvalidKey, ValueError)
    # Nothing landed outside the store's folder.
    assert sorted(p.name for p in tmp_path.iterdir()) in (["objects"], [])


def test_presigned_urls(store):
    key = result_key(TENANT, 5, "jpg")
    if isinstance(store, LocalStore):
        store.put_bytes(key, b"jpeg bytes")
        assert store.presigned_get_url(key) is None
        assert store.presigned_put_url(key) is None
        return
    put_url = store.presigned_put_url(key, expires_s=300, content_type="image/jpeg")
    assert put_url.startswith(store.endpoint_url) and "X-Amz-Signature=" in put_url
    body = b"\xff\xd8 uploaded straight to object storage"
    request = urllib.request.Request(put_url, data=body, method="PUT", headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    assert store.get_bytes(key) == body
    get_url = store.presigned_get_url(key, expires_s=300, filename="Grandma 1952 (restored).jpg")
    with urllib.request.urlopen(get_url, timeout=10) as resp:
        assert resp.read() == body
        disposition = resp.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and "Grandma_1952_restored_.jpg" in disposition
    with urllib.request.urlopen(store.presigned_get_url(key), timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg"


def test_key_helpers_are_deterministic_and_safe():
    sha = hashlib.sha256(b"x").hexdigest()
    assert original_key("acme", sha, ".JPG") == f"acme/originals/{sha}.jpg"
    assert original_key("acme", sha, "") == f"acme/originals/{sha}"
    assert original_key("acme", sha, ".jpg~backup") == f"acme/originals/{sha}"  # odd client suffix dropped
    assert reference_key(7, sha, "png") == f"7/references/{sha}.png"
    assert result_key("acme", 42, ".tif") == "acme/results/42/restored.tif"
    assert report_key("acme", "b7") == "acme/reports/b7/report.html"
    assert index_key("acme") == "acme/index/references.npz"
    assert upload_key("acme", "b7", "../../evil name.zip") == "acme/uploads/b7/evil_name.zip"
    assert upload_key("acme", "b7", "C:\\photos\\scan 01.tif") == "acme/uploads/b7/scan_01.tif"
    for bad in (
        lambda: original_key("acme", "not-a-sha", "jpg"),
        lambda: original_key("../acme", sha, "jpg"),
        lambda: result_key("acme", "a/b", "png"),
        lambda: result_key("acme", 1, ""),
        lambda: result_key("acme", 1, "jp/g"),
    ):
        with pytest.raises(InvalidKey):
            bad()


# --------------------------------------------------------------------------- factory


def test_open_store_from_urls_and_settings(tmp_path, s3_bucket):
    local = open_store(tmp_path.joinpath("a").as_uri())
    assert isinstance(local, LocalStore) and local.root == tmp_path / "a"
    plain = open_store(str(tmp_path / "b"))
    assert isinstance(plain, LocalStore) and plain.root == tmp_path / "b"
    default = open_store(settings=Settings(data_dir=tmp_path / "data", storage_url=None))
    assert isinstance(default, LocalStore) and default.root == (tmp_path / "data" / "objects").resolve()
    with pytest.raises(ValueError):
        open_store("ftp://example.org/x")

    settings = Settings(
        storage_url=f"s3://{s3_bucket.bucket}/tenant-data",
        s3_endpoint_url=s3_bucket.endpoint_url,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    prefixed = open_store(settings=settings)
    assert isinstance(prefixed, S3Store)
    assert prefixed.url == f"s3://{s3_bucket.bucket}/tenant-data"
    prefixed.put_bytes("acme/x.bin", b"1")
    unprefixed = open_store(f"s3://{s3_bucket.bucket}", settings=settings)
    assert unprefixed.list_keys() == ["tenant-data/acme/x.bin"]  # the prefix isolates the stores
    assert prefixed.list_keys() == ["acme/x.bin"]


def test_ensure_bucket_creates_a_missing_bucket(moto_server):
    store = S3Store(
        "pikfix-created-by-test",
        endpoint_url=moto_server.endpoint_url,
        region="us-east-1",
        access_key="testing",
        secret_key="testing",
    )
    try:
        assert store.ping() is False  # missing bucket: not ready
        with pytest.raises(StorageUnavailable):
            store.put_bytes("a", b"1")
        store.ensure_bucket()
        store.ensure_bucket()
        assert store.ping() is True
        store.put_bytes("a", b"1")
        assert store.get_bytes("a") == b"1"
    finally:
        moto_server.delete_bucket("pikfix-created-by-test")


# --------------------------------------------------------------------------- failures


def _s3_store_at(endpoint: str, **options) -> S3Store:
    return S3Store(
        "bucket",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key="testing",
        secret_key="testing",
        connect_timeout=0.5,
        read_timeout=0.5,
        max_attempts=2,
        **options,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_storage_unavailable_quickly(tmp_path):
    store = _s3_store_at(f"http://127.0.0.1:{_closed_port()}")
    src = tmp_path / "f.bin"
    src.write_bytes(b"abc")
    started = time.monotonic()
    for call in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.list_keys(),
        lambda: store.put_file("k", src),
        lambda: store.download_file("k", tmp_path / "out.bin"),
    ):
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert isinstance(info.value, RuntimeError)
    assert store.ping() is False
    assert time.monotonic() - started < 20  # 7 calls, 2 attempts each, with backoff


@pytest.fixture
def stalled_endpoint() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung load balancer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_stalled_endpoint_times_out_as_storage_unavailable(stalled_endpoint):
    store = _s3_store_at(stalled_endpoint)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.get_bytes("k")
    assert time.monotonic() - started < 8


class _Always503(http.server.BaseHTTPRequestHandler):
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


def test_server_errors_are_storage_unavailable():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = _s3_store_at(f"http://127.0.0.1:{server.server_address[1]}")
        for call in (
            lambda: store.get_bytes("k"),
            lambda: store.put_bytes("k", b"x"),
            lambda: store.size("k"),
        ):
            with pytest.raises(StorageUnavailable):
                call()
    finally:
        server.shutdown()
        server.server_close()


def test_local_store_writes_are_atomic_and_never_escape(tmp_path):
    store = LocalStore(tmp_path / "objects")
    store.put_bytes("acme/a.bin", b"1" * 1000)
    assert list((store.root / ".tmp").iterdir()) == []
    assert store.list_keys() == ["acme/a.bin"]
    # A symlink planted inside the folder must not lead a key outside it.
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.root / "acme" / "link")
    with pytest.raises(InvalidKey):
        store.put_bytes("acme/link/pwned.bin", b"x")
    assert list(outside.iterdir()) == []
    # A key that would need a file to be a folder is refused, not half-written.
    with pytest.raises(InvalidKey):
        store.put_bytes("acme/a.bin/child", b"x")
    assert store.get_bytes("acme/a.bin") == b"1" * 1000
