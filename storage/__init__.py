"""Object storage: one interface over S3 (AWS, MinIO, any S3 endpoint) and a local folder.

Workers and the API only ever see :class:`ObjectStore`. The embedded mode uses :class:`LocalStore`,
the distributed mode :class:`S3Store`; both refuse the same bad keys and raise the same errors, so
code tested against one behaves the same against the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from storage.base import (
    BucketMissing,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    StorageUnavailable,
)
from storage.keys import (
    index_key,
    original_key,
    put_content_addressed,
    reference_key,
    report_key,
    result_key,
    safe_filename,
    sha256_file,
    upload_key,
    validate_key,
)
from storage.local import LocalStore
from storage.s3 import S3Store


def open_store(url: str | None = None, settings: Any = None, **options: Any) -> ObjectStore:
    """Open the store named by ``url`` (default: the settings' storage URL); the service passes its settings.

    ``s3://bucket[/prefix]`` takes endpoint, region and credentials from the settings;
    ``file:///path`` or a plain path opens a folder. ``options`` go to :class:`S3Store`
    (timeouts, retries, multipart sizes); settings fields ``s3_connect_timeout_s``,
    ``s3_read_timeout_s`` and ``s3_max_attempts`` are honoured when present.
    """
    if url is None and settings is None:
        raise TypeError("open_store needs a storage URL or the settings that name one")
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
    "BucketMissing", "InvalidKey", "LocalStore", "ObjectNotFound", "ObjectStore", "S3Store", "StorageError",
    "StorageUnavailable", "index_key", "open_store", "original_key", "put_content_addressed", "reference_key",
    "report_key", "result_key", "safe_filename", "sha256_file", "upload_key", "validate_key",
]
