"""Objects in an S3 bucket (AWS, MinIO, any S3 endpoint); boto3 is imported only when a store is made."""

from __future__ import annotations

import contextlib
import io
import logging
import mimetypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import quote

from storage.base import (
    BucketMissing,
    MiB,
    MultipartRejected,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from storage.keys import safe_filename, validate_key, validate_prefix

log = logging.getLogger(__name__)

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

# Completing a multipart upload fails with these when the client's parts or upload id are wrong.
_MULTIPART_REFUSALS = {
    "NoSuchUpload": "no such multipart upload (wrong id, or already completed or aborted)",
    "InvalidPart": "a part was not uploaded or its ETag does not match",
    "InvalidPartOrder": "the parts are not in ascending order",
    "EntityTooSmall": "a part other than the last is smaller than 5 MiB",
}


def _guess_type(key: str, content_type: str | None) -> str:
    return content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"


def _content_disposition(filename: str) -> str:
    """``attachment`` header with an ASCII fallback and the RFC 5987 UTF-8 name for browsers."""
    ascii_name = safe_filename(filename, default="download")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


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
        prefix = validate_prefix(prefix)
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

    # -- multipart uploads a client makes through presigned part URLs
    def start_presigned_multipart(self, key: str, content_type: str | None = None) -> str:
        """Open a multipart upload of ``key``; its parts are PUT by the client to presigned URLs."""
        with self._errors("start multipart upload", key):
            answer = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), ContentType=_guess_type(key, content_type)
            )
        return str(answer["UploadId"])

    def presigned_part_urls(self, key: str, upload_id: str, parts: int, expires_s: int = 3600) -> list[str]:
        """One PUT URL per part number 1..``parts``; each part's answer carries the ETag to complete with."""
        full = self._full(key)
        with self._errors("presign", key):
            return [
                self.presign_client.generate_presigned_url(
                    "upload_part",
                    Params={"Bucket": self.bucket, "Key": full, "UploadId": upload_id, "PartNumber": number},
                    ExpiresIn=int(expires_s),
                )
                for number in range(1, parts + 1)
            ]

    def complete_presigned_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None:
        """Join the parts into the object; a wrong ETag, part or upload id is :class:`MultipartRejected`."""
        from botocore.exceptions import ClientError

        parts = [{"PartNumber": number, "ETag": etag} for number, etag in sorted(etags)]
        with self._errors("complete multipart upload", key):
            try:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self._full(key), UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in _MULTIPART_REFUSALS:
                    raise
                message = exc.response.get("Error", {}).get("Message", "") or _MULTIPART_REFUSALS[code]
                raise MultipartRejected(f"{code}: {message}") from exc

    def abort_presigned_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload and its parts; an unknown upload id is not an error."""
        from botocore.exceptions import ClientError

        with self._errors("abort multipart upload", key):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) != "NoSuchUpload":
                    raise

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
