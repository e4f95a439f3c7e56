"""Objects as files in a local folder: the embedded mode's store."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from storage.base import InvalidKey, MiB, ObjectNotFound, StorageError, StorageUnavailable
from storage.keys import RESERVED_TOP, validate_key, validate_prefix

log = logging.getLogger(__name__)


class LocalStore:
    """Objects as files under ``root``; the embedded mode's store.

    Writes go to a temporary file in ``root/.tmp`` and are moved into place with ``os.replace``,
    so a reader never sees half an object and a crash leaves no partial file under a real key.
    Presigned URLs are ``None``: the API serves the bytes itself.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        self._tmp = self.root / RESERVED_TOP
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
        prefix = validate_prefix(prefix)
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if not start.is_dir() or not start.resolve().is_relative_to(self.root):
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != RESERVED_TOP]
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

    def start_presigned_multipart(self, key: str, content_type: str | None = None) -> None:
        """No URLs to hand out: the API answers ``presigned_unavailable``."""
        validate_key(key)
        return None

    def presigned_part_urls(self, key: str, upload_id: str, parts: int, expires_s: int = 3600) -> list[str]:
        raise StorageError("a local folder has no presigned multipart uploads")

    def complete_presigned_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None:
        raise StorageError("a local folder has no presigned multipart uploads")

    def abort_presigned_multipart(self, key: str, upload_id: str) -> None:
        raise StorageError("a local folder has no presigned multipart uploads")

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
