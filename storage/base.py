"""The object store interface and its errors, shared by both backends.

Errors are split by what a caller should do about them:

- :class:`ObjectNotFound` (a ``KeyError``): the object is missing; retrying will not help.
- :class:`StorageUnavailable` (a ``RuntimeError``): connection refused, timeout, 5xx, throttling;
  the operation may succeed later, so a task should retry with backoff.
- :class:`InvalidKey` (a ``ValueError``): a key that could escape the store or collide with a folder.
- :class:`StorageError`: anything else (access denied, bad credentials); a configuration problem.
"""

from __future__ import annotations

import os
from typing import IO, BinaryIO, Protocol, runtime_checkable

MiB = 1024 * 1024


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


class MultipartRejected(StorageError, ValueError):
    """Completing a multipart upload was refused for the client's input (unknown upload id, a part
    missing or with another ETag): retrying the same request will not help."""


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

    def start_presigned_multipart(self, key: str, content_type: str | None = None) -> str | None:
        """An upload id for parts a client PUTs to presigned URLs; ``None`` where the store has no URLs."""
        ...

    def presigned_part_urls(self, key: str, upload_id: str, parts: int, expires_s: int = 3600) -> list[str]: ...

    def complete_presigned_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None: ...

    def abort_presigned_multipart(self, key: str, upload_id: str) -> None: ...

    def ping(self) -> bool: ...

    def check(self) -> None: ...

    def ensure_bucket(self) -> None: ...
