"""Object storage: one interface over S3 (AWS, MinIO, any S3 endpoint) and a local folder.

Workers and the API only ever see :class:`ObjectStore`. The embedded mode uses :class:`LocalStore`,
the distributed mode :class:`S3Store`; both refuse the same bad keys and raise the same errors, so
code tested against one behaves the same against the other.

Errors are split by what a caller should do about them:

- :class:`ObjectNotFound` (a ``KeyError``): the object is missing; retrying will not help.
- :class:`StorageUnavailable` (a ``RuntimeError``): connection refused, timeout, 5xx, throttling;
  the operation may succeed later, so a task should retry with backoff.
- :class:`InvalidKey` (a ``ValueError``): a key that could escape the store or collide with a folder.
- :class:`StorageError`: anything else (access denied, bad credentials); a configuration problem.

Photos are stored content-addressed (``{tenant}/originals/{sha256}{ext}``) so the same scan uploaded
twice is stored once, and results go to deterministic keys so a retried job overwrites, never duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Protocol, runtime_checkable
from urllib.parse import quote, unquote, urlparse
from urllib.request import url2pathname

log = logging.getLogger(__name__)

MiB = 1024 * 1024


# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base class of every storage failure; on its own it means a non-transient problem."""


class ObjectNotFound(StorageError, KeyError):
    """No object under this key. A ``KeyError`` so dict-like callers can catch it naturally."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:  # KeyError would print the repr of the key only
        return f"no such object: {self.key}"


class StorageUnavailable(StorageError, RuntimeError):
    """The store could not be reached or answered with a server-side error: worth retrying."""


class BucketMissing(StorageError):
    """The bucket does not exist: a setup step was missed, not an outage."""


class InvalidKey(StorageError, ValueError):
    """The key is malformed (``..``, absolute, backslash, empty segment) or collides with a folder."""


# --------------------------------------------------------------------------- interface


@runtime_checkable
class ObjectStore(Protocol):
    """What the service needs from an object store. Keys are ``/``-separated relative names."""

    url: str

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None: ...

    def put_stream(self, key: str, fileobj: IO[bytes], content_type: str | None = None) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None: ...

    def open_stream(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...

    def presigned_get_url(
        self, key: str, expires_s: int = 3600, filename: str | None = None
    ) -> str | None: ...

    def presigned_put_url(
        self, key: str, expires_s: int = 3600, content_type: str | None = None
    ) -> str | None: ...

    def ping(self) -> bool: ...

    def check(self) -> None: ...

    def ensure_bucket(self) -> None: ...


# --------------------------------------------------------------------------- keys

_RESERVED_TOP = ".tmp"  # LocalStore's staging folder for atomic writes; never a key's first segment


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object name, else raise :class:`InvalidKey`.

    Both backends apply the same rule, so a key that works in the embedded mode works on S3 and
    no key can reach outside a LocalStore's folder.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"object key must be a non-empty string, got {key!r}")
    if "\\" in key or "\x00" in key:
        raise InvalidKey(f"object key may not contain backslashes or NUL: {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"object key must be relative: {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidKey(f"object key has an empty, '.' or '..' segment: {key!r}")
    if parts[0] == _RESERVED_TOP:
        raise InvalidKey(f"object key may not start with the reserved {_RESERVED_TOP!r} segment: {key!r}")
    if len(key.encode("utf-8")) > 1024:
        raise InvalidKey("object key longer than 1024 bytes (the S3 limit)")
    return key


def _validate_prefix(prefix: str) -> str:
    """A listing prefix may be empty or end with '/'; otherwise it follows the key rules."""
    if not prefix:
        return ""
    validate_key(prefix.rstrip("/") or "x")  # a bare "/" is refused by validate_key below
    if prefix.startswith("/"):
        raise InvalidKey(f"prefix must be relative: {prefix!r}")
    return prefix


_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


def _segment(value: object, what: str) -> str:
    """A tenant, job or batch id as one key segment: no slashes, no dots-only names."""
    text = str(value)
    if not _SEGMENT_RE.match(text):
        raise InvalidKey(f"{what} is not usable in an object key: {text!r}")
    return text


def _sha(value: str) -> str:
    if not _SHA256_RE.match(value):
        raise InvalidKey(f"not a lowercase hex sha256: {value!r}")
    return value


_EXT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tiff": "tif"}


def _dotted_ext(ext: str, strict: bool = True) -> str:
    """'.JPG', 'jpg' -> '.jpg'; '' stays ''.

    ``strict=False`` (uploaded originals and references, whose extension comes from a client's file
    name and is only informative: decoders sniff the bytes) drops an odd extension instead of failing.
    """
    ext = (ext or "").strip().lower().lstrip(".")
    if ext and not re.fullmatch(r"[a-z0-9]{1,10}", ext):
        if not strict:
            return ""
        raise InvalidKey(f"bad file extension: {ext!r}")
    if not strict:  # one spelling per format, so scan.jpeg and scan.JPG of the same bytes share a key
        ext = _EXT_ALIASES.get(ext, ext)
    return f".{ext}" if ext else ""


def original_key(tenant: object, sha256: str, ext: str) -> str:
    """Content-addressed key of an uploaded photo: the same bytes always land on the same key."""
    return f"{_segment(tenant, 'tenant')}/originals/{_sha(sha256)}{_dotted_ext(ext, strict=False)}"


def reference_key(tenant: object, sha256: str, ext: str) -> str:
    """Content-addressed key of a colour reference photo in a tenant's corpus."""
    return f"{_segment(tenant, 'tenant')}/references/{_sha(sha256)}{_dotted_ext(ext, strict=False)}"


def result_key(tenant: object, job_id: object, ext: str) -> str:
    """Deterministic key of a job's restored image, so a retried job overwrites its earlier output."""
    dotted = _dotted_ext(ext)
    if not dotted:
        raise InvalidKey("a result needs a file extension")
    return f"{_segment(tenant, 'tenant')}/results/{_segment(job_id, 'job id')}/restored{dotted}"


def report_key(tenant: object, batch_id: object, ext: str = "html") -> str:
    """Key of a batch's report (HTML by default; the same folder takes a JSON or CSV twin)."""
    dotted = _dotted_ext(ext) or ".html"
    return f"{_segment(tenant, 'tenant')}/reports/{_segment(batch_id, 'batch id')}/report{dotted}"


def index_key(tenant: object, ext: str = "npz") -> str:
    """Key of a tenant's reference retrieval index (kept apart from the reference photos themselves)."""
    dotted = _dotted_ext(ext) or ".npz"
    return f"{_segment(tenant, 'tenant')}/index/references{dotted}"


def safe_filename(name: str, default: str = "upload") -> str:
    """Reduce a client-supplied file name to one harmless segment (basename, no odd characters)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_NAME_RE.sub("_", base).strip("._") or default
    if len(base) > 150:
        stem, dot, ext = base.rpartition(".")
        base = (stem[:140] + dot + ext[:9]) if dot and len(ext) <= 9 else base[:150]
    return base


def upload_key(tenant: object, batch_id: object, name: str) -> str:
    """Staging key for a file a client uploads through a presigned PUT (e.g. a large archive)."""
    return f"{_segment(tenant, 'tenant')}/uploads/{_segment(batch_id, 'batch id')}/{safe_filename(name)}"


def sha256_file(path: str | os.PathLike[str], chunk: int = MiB) -> str:
    """sha256 of a file read in chunks, so a 500 MB scan never sits in memory at once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def put_content_addressed(
    store: ObjectStore,
    tenant: object,
    data: bytes | bytearray | memoryview | str | os.PathLike[str],
    ext: str,
    kind: Literal["original", "reference"] = "original",
    content_type: str | None = None,
) -> tuple[str, str, bool]:
    """Store ``data`` (bytes or a file path) under its sha256 key; return ``(key, sha256, created)``.

    ``created`` is False when the same content was already stored: the same photo uploaded twice is
    stored once. Two concurrent uploads of the same bytes both write identical content, so the race
    is harmless.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        payload: bytes | None = bytes(data)
        digest = hashlib.sha256(payload).hexdigest()
        path = None
    else:
        payload = None
        path = Path(data)
        digest = sha256_file(path)
    if kind == "original":
        key = original_key(tenant, digest, ext)
    elif kind == "reference":
        key = reference_key(tenant, digest, ext)
    else:
        raise ValueError(f"kind must be 'original' or 'reference', not {kind!r}")
    if store.exists(key):
        return key, digest, False
    if payload is not None:
        store.put_bytes(key, payload, content_type=content_type)
    else:
        assert path is not None
        store.put_file(key, path, content_type=content_type)
    return key, digest, True


def _guess_type(key: str, content_type: str | None) -> str:
    return content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"


def _content_disposition(filename: str) -> str:
    """``attachment`` header with an ASCII fallback and the RFC 5987 UTF-8 name for browsers."""
    ascii_name = safe_filename(filename, default="download")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


# --------------------------------------------------------------------------- local folder


class LocalStore:
    """Objects as files under ``root``; the embedded mode's store.

    Writes go to a temporary file in ``root/.tmp`` and are moved into place with ``os.replace``,
    so a reader never sees half an object and a crash leaves no partial file under a real key.
    Presigned URLs are ``None``: the API serves the bytes itself.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        self._tmp = self.root / _RESERVED_TOP
        self.ensure_bucket()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths
    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*validate_key(key).split("/"))
        # A symlink inside the folder must not lead outside it.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"object key resolves outside the store: {key!r}")
        return path

    @contextlib.contextmanager
    def _staged(self, key: str) -> Iterator[IO[bytes]]:
        """Yield a temp file; on success fsync it and move it onto the key's path atomically."""
        target = self._path(key)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_name, target)
            except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
                raise InvalidKey(f"object key collides with an existing object or folder: {key!r}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key!r} under {self.root}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def _open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller owns the stream
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key!r}: {exc}") from exc

    # -- writes
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with self._staged(key) as f:
            f.write(data)

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        with open(path, "rb") as src, self._staged(key) as f:
            shutil.copyfileobj(src, f, MiB)

    def put_stream(self, key: str, fileobj: IO[bytes], content_type: str | None = None) -> None:
        with self._staged(key) as f:
            shutil.copyfileobj(fileobj, f, MiB)

    # -- reads
    def get_bytes(self, key: str) -> bytes:
        with self._open_read(key) as f:
            return f.read()

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._open_read(key) as src:
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, MiB)
                os.replace(tmp_name, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)

    def open_stream(self, key: str) -> BinaryIO:
        return self._open_read(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.stat().st_size

    def delete(self, key: str) -> None:
        """Idempotent, like S3: deleting a missing object is not an error."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as on S3), sorted."""
        prefix = _validate_prefix(prefix)
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if not start.is_dir() or not start.resolve().is_relative_to(self.root):
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != _RESERVED_TOP]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    # -- URLs and health
    def presigned_get_url(self, key: str, expires_s: int = 3600, filename: str | None = None) -> None:
        validate_key(key)
        return None

    def presigned_put_url(self, key: str, expires_s: int = 3600, content_type: str | None = None) -> None:
        validate_key(key)
        return None

    def ping(self) -> bool:
        try:
            self.check()
        except StorageError as exc:
            log.warning("%s", exc)
            return False
        return True

    def check(self) -> None:
        """Raise a :class:`StorageError` that says what is wrong with the folder and how to fix it."""
        if not self.root.is_dir():
            raise StorageError(f"object folder {self.root} does not exist; create it with `mkdir -p {self.root}`")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"object folder {self.root} is not writable by this user")

    def ensure_bucket(self) -> None:
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create the object folder {self.root}: {exc}") from exc


# --------------------------------------------------------------------------- S3

_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def _new_s3_client(**kwargs: Any) -> Any:
    """A client from one shared boto3 session: ten times cheaper than a session per client.

    Clients are thread-safe; creating them from a shared session is not, hence the lock.
    """
    global _SESSION
    import boto3

    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client("s3", **kwargs)


_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
}


class _S3ReadStream(io.RawIOBase):
    """A botocore body whose read errors (reset connection, stalled read) become StorageUnavailable."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return self._body.read(None if size is None or size < 0 else size)
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"reading {self._key!r} failed: {exc}") from exc

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


class S3Store:
    """Objects in an S3 bucket (AWS, MinIO, any S3 endpoint) under an optional key prefix.

    Timeouts and a bounded retry budget are set on the client, so a dead endpoint fails within
    roughly ``max_attempts * connect_timeout`` plus backoff rather than hanging a worker. Large files
    go through boto3's managed transfer (multipart above ``multipart_threshold``).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        client: Any = None,
        *,
        public_endpoint_url: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        multipart_threshold: int = 16 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_concurrency: int = 4,
    ) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url or None
        self.region = region

        def make_client(endpoint: str | None) -> Any:
            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": max(1, int(max_attempts)), "mode": "standard"},
                signature_version="s3v4",
                # MinIO and most self-hosted endpoints only speak path-style addressing.
                s3={"addressing_style": "path" if endpoint else "auto"},
            )
            return _new_s3_client(
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                config=config,
            )

        self.client = client if client is not None else make_client(endpoint_url)
        # A signed URL names its host, so URLs for clients outside the service's network (compose's
        # http://minio:9000 is not theirs) are signed by a client of the public endpoint; every call the
        # service itself makes still goes to ``endpoint_url``.
        if self.public_endpoint_url and self.public_endpoint_url != endpoint_url:
            self.presign_client = make_client(self.public_endpoint_url)
        else:
            self.presign_client = self.client
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
            use_threads=max_concurrency > 1,
        )

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Store({self.url!r}{where})"

    def _missing_bucket_hint(self) -> str:
        endpoint = f" --endpoint-url {self.endpoint_url}" if self.endpoint_url else ""
        return (
            f"bucket {self.bucket} does not exist; create it with `aws s3 mb s3://{self.bucket}{endpoint}` "
            f"(or `mc mb ALIAS/{self.bucket}` on MinIO)"
        )

    # -- keys and errors
    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _translate(self, exc: BaseException, op: str, key: str | None) -> StorageError:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
            ResponseStreamingError,
        )

        where = f"s3://{self.bucket}/{self._full(key)}" if key else f"s3://{self.bucket}"
        if isinstance(exc, S3UploadFailedError):  # the transfer manager hides the ClientError here
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, ClientError):
                exc = inner
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _MISSING_CODES and key is not None:
                return ObjectNotFound(key)
            if code == "NoSuchBucket" or (code in _MISSING_CODES and key is None):
                return StorageUnavailable(f"{op} {where}: {self._missing_bucket_hint()}")
            # Name both the S3 error code and the HTTP status: operators grep for either.
            reason = " ".join(p for p in (code, f"(HTTP {status})" if status else "", error.get("Message", "")) if p)
            if status >= 500 or code in _TRANSIENT_CODES:
                return StorageUnavailable(f"{op} {where}: {reason}")
            return StorageError(f"{op} {where}: {reason}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(f"{op} {where}: no S3 credentials configured")
        if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError | ResponseStreamingError):
            return StorageUnavailable(f"{op} {where}: {exc}")
        if isinstance(exc, S3UploadFailedError):
            return StorageUnavailable(f"{op} {where}: {exc}")
        return StorageError(f"{op} {where}: {exc}")

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:  # a missing local source file stays as is
            raise self._translate(exc, op, key) from exc

    # -- writes
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        full = self._full(key)
        with self._errors("put", key):
            self.client.put_object(
                Bucket=self.bucket, Key=full, Body=bytes(data), ContentType=_guess_type(key, content_type)
            )

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        full = self._full(key)
        with self._errors("upload", key):
            self.client.upload_file(
                os.fspath(path),
                self.bucket,
                full,
                ExtraArgs={"ContentType": _guess_type(key, content_type)},
                Config=self.transfer_config,
            )

    def put_stream(self, key: str, fileobj: IO[bytes], content_type: str | None = None) -> None:
        full = self._full(key)
        with self._errors("upload", key):
            self.client.upload_fileobj(
                fileobj,
                self.bucket,
                full,
                ExtraArgs={"ContentType": _guess_type(key, content_type)},
                Config=self.transfer_config,
            )

    # -- reads
    def get_bytes(self, key: str) -> bytes:
        with self.open_stream(key) as stream:
            return stream.read()

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        full = self._full(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self._errors("download", key):  # boto3 writes a temp file and renames it when complete
            self.client.download_file(self.bucket, full, os.fspath(path), Config=self.transfer_config)

    def open_stream(self, key: str) -> BinaryIO:
        """A forward-only stream (not seekable: Pillow copies it into memory itself if it must seek)."""
        full = self._full(key)
        with self._errors("get", key):
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        return _S3ReadStream(body, key)  # type: ignore[return-value]

    def _head(self, key: str) -> dict[str, Any] | None:
        full = self._full(key)
        try:
            with self._errors("head", key):
                return self.client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(key)
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        """Idempotent: S3 answers success for a missing key too."""
        full = self._full(key)
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys (relative to the store prefix) starting with ``prefix``, sorted."""
        prefix = _validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        with self._errors("list", prefix or None):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                keys.extend(obj["Key"][len(base) :] for obj in page.get("Contents", []))
        keys.sort()
        return keys

    # -- URLs and health
    def presigned_get_url(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if filename:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        with self._errors("presign", key):
            return self.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=int(expires_s))

    def presigned_put_url(self, key: str, expires_s: int = 3600, content_type: str | None = None) -> str:
        """A URL a client can PUT the bytes to; with ``content_type`` it must send that same header."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if content_type:
            params["ContentType"] = content_type
        with self._errors("presign", key):
            return self.presign_client.generate_presigned_url("put_object", Params=params, ExpiresIn=int(expires_s))

    def ping(self) -> bool:
        """True when the bucket answers; the reason for a failure is logged."""
        try:
            self.check()
        except StorageError as exc:
            log.warning("object store %s: %s", self.url, exc)
            return False
        return True

    def check(self) -> None:
        """Raise a :class:`StorageError` that tells a missing bucket, refused credentials and an
        unreachable endpoint apart, each with what to do (for /readyz and the start-up logs)."""
        from botocore.exceptions import ClientError

        try:
            with self._errors("head bucket"):
                self.client.head_bucket(Bucket=self.bucket)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code", ""))
                if code in ("404", "NoSuchBucket", "NotFound"):
                    raise BucketMissing(self._missing_bucket_hint()) from cause
                if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise StorageError(
                        f"access to bucket {self.bucket} was refused ({code}); check PIKFIX_S3_ACCESS_KEY_ID, "
                        "PIKFIX_S3_SECRET_ACCESS_KEY and the bucket's policy"
                    ) from cause
            raise

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (development, tests, a fresh MinIO)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._translate(exc, "head bucket", None) from exc
        except Exception as exc:
            raise self._translate(exc, "head bucket", None) from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.region or self.client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._translate(exc, "create bucket", None) from exc
        except Exception as exc:
            raise self._translate(exc, "create bucket", None) from exc


# --------------------------------------------------------------------------- factory


def open_store(url: str | None = None, settings: Any = None, **options: Any) -> ObjectStore:
    """Open the store named by ``url`` (default: the settings' storage URL).

    ``s3://bucket[/prefix]`` takes endpoint, region and credentials from the settings;
    ``file:///path`` or a plain path opens a folder. ``options`` go to :class:`S3Store`
    (timeouts, retries, multipart sizes); settings fields ``s3_connect_timeout_s``,
    ``s3_read_timeout_s`` and ``s3_max_attempts`` are honoured when present.
    """
    if settings is None:
        from pikfix.settings import get_settings

        settings = get_settings()
    target = url or settings.resolved_storage_url
    parsed = urlparse(target)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"s3 URL without a bucket: {target!r}")
        for field, option in (
            ("s3_connect_timeout_s", "connect_timeout"),
            ("s3_read_timeout_s", "read_timeout"),
            ("s3_max_attempts", "max_attempts"),
        ):
            value = getattr(settings, field, None)
            if value is not None:
                options.setdefault(option, value)
        return S3Store(
            parsed.netloc,
            prefix=unquote(parsed.path).strip("/"),
            endpoint_url=getattr(settings, "s3_endpoint_url", None),
            public_endpoint_url=getattr(settings, "s3_public_endpoint_url", None),
            region=getattr(settings, "s3_region", None),
            access_key=getattr(settings, "s3_access_key_id", None),
            secret_key=getattr(settings, "s3_secret_access_key", None),
            **options,
        )
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL with a remote host is not supported: {target!r}")
        return LocalStore(Path(url2pathname(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r} in {target!r}")
    return LocalStore(Path(target))


__all__ = [
    "BucketMissing",
    "InvalidKey",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StorageError",
    "StorageUnavailable",
    "index_key",
    "open_store",
    "original_key",
    "put_content_addressed",
    "reference_key",
    "report_key",
    "result_key",
    "safe_filename",
    "sha256_file",
    "upload_key",
    "validate_key",
]
