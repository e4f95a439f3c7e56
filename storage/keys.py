"""The service's key layout and the key rules both backends enforce.

Photos are stored content-addressed (``{tenant}/originals/{sha256}{ext}``) so the same scan uploaded
twice is stored once, and results go to deterministic keys so a retried job overwrites, never duplicates.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

from storage.base import InvalidKey, MiB, ObjectStore

RESERVED_TOP = ".tmp"  # LocalStore's staging folder for atomic writes; never a key's first segment


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
    if parts[0] == RESERVED_TOP:
        raise InvalidKey(f"object key may not start with the reserved {RESERVED_TOP!r} segment: {key!r}")
    if len(key.encode("utf-8")) > 1024:
        raise InvalidKey("object key longer than 1024 bytes (the S3 limit)")
    return key


def validate_prefix(prefix: str) -> str:
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
