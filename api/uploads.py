"""Uploads: multipart bodies streamed to temporary files with size limits, hashed and sniffed on the way.

FastAPI's ``UploadFile`` parses the whole body before a handler runs, with no per-file limit. Here the
body is parsed chunk by chunk (python-multipart's streaming parser), so a file over the limit is refused
the moment it crosses it, the sha256 is computed while the bytes arrive (the content-addressed key is
known without a second pass), and the first and last bytes are kept for sniffing: what a file *is* is
decided from its bytes, never from its name or declared content type. Small files stay in memory,
large ones spill to disk (``SpooledTemporaryFile``).

Images are checked from the header only (format allowlist, pixel count, end marker): the full decode
happens in the worker, which records the same error codes if something deeper is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import posixpath
import re
import uuid
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Literal

from anyio import to_thread
from fastapi import HTTPException
from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_body, status_of
from api.schemas import Rejected, text_problem
from pikfix.errors import PikFixInputError
from pikfix.imageio import missing_end_marker, open_image, sniff_image_format
from storage import ObjectStore, original_key, reference_key, safe_filename
from workers.archive import IMAGE_EXTENSIONS

MiB = 1024 * 1024
SPOOL_BYTES = 1 * MiB  # files up to this size never touch the disk
HEAD_BYTES = 4096
TAIL_BYTES = 4096

_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "gif": ".gif", "webp": ".webp",
               "jpeg2000": ".jp2"}
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff", "bmp": "image/bmp",
                  "gif": "image/gif", "webp": "image/webp", "jpeg2000": "image/jp2"}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip


# --------------------------------------------------------------------------- staged files


@dataclass
class StagedFile:
    """One uploaded file, fully received: a temporary file plus what was learnt while receiving it."""

    field: str
    raw_name: str
    name: str  # sanitised: path components and odd characters stripped
    file: IO[bytes]
    size: int = 0
    head: bytes = b""
    tail: bytes = b""
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self._hash.hexdigest()
        return self._sha256

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self._hash.update(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.tail = (self.tail + data)[-TAIL_BYTES:]

    def rewind(self) -> IO[bytes]:
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


def new_staged(field_name: str, raw_name: str, default_name: str = "upload") -> StagedFile:
    return StagedFile(
        field=field_name,
        raw_name=raw_name,
        name=safe_filename(raw_name, default=default_name),
        file=SpooledTemporaryFile(max_size=SPOOL_BYTES),  # noqa: SIM115 - closed by StagedFile.close
    )


def stage_stream(source: IO[bytes], name: str, max_bytes: int, chunk: int = MiB) -> StagedFile:
    """Copy a stream (an object read back from storage) into a staged file, enforcing ``max_bytes``."""
    staged = new_staged("file", name)
    try:
        while block := source.read(chunk):
            if staged.size + len(block) > max_bytes:
                raise ApiError("file_too_large", f"{name}: larger than the limit of {max_bytes} bytes")
            staged.size += len(block)
            staged.write(block)
    except BaseException:
        staged.close()
        raise
    return staged


# --------------------------------------------------------------------------- multipart parsing


@dataclass(frozen=True)
class MultipartLimits:
    max_file_bytes: int
    max_files: int = 1000
    max_fields: int = 50
    max_field_bytes: int = 64 * 1024


@dataclass
class MultipartForm:
    """Files grouped by field name, plus the plain text fields; a context manager that closes the files."""

    files: dict[str, list[StagedFile]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def all_files(self) -> list[StagedFile]:
        return [f for group in self.files.values() for f in group]

    def close(self) -> None:
        for staged in self.all_files():
            staged.close()

    def __enter__(self) -> MultipartForm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(raw: bytes, what: str) -> str:
    """A header value or form field as text; 422 for characters the database cannot store (NUL)."""
    value = raw.decode("utf-8", errors="replace")
    if (problem := text_problem(value)) is not None:
        raise ApiError("validation_error", f"{what} {problem}")
    return value


class _Receiver:
    """python-multipart callbacks: enforce limits synchronously, queue file bytes for a worker thread."""

    def __init__(self, limits: MultipartLimits, form: MultipartForm) -> None:
        self.limits = limits
        self.form = form
        self.pending: list[tuple[StagedFile, bytes]] = []
        self.finished = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._file: StagedFile | None = None
        self._field_name: str | None = None
        self._field_data = bytearray()
        self._n_files = 0
        self._n_fields = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._file = None
        self._field_name = None
        self._field_data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise ApiError("validation_error", "a multipart part has no name in its Content-Disposition")
        name = _text(options[b"name"], "a multipart part's name")
        if b"filename" in options:
            self._n_files += 1
            if self._n_files > self.limits.max_files:
                raise ApiError("request_too_large", f"more than {self.limits.max_files} files in one request")
            raw_name = _text(options[b"filename"], f"the file name of part {name!r}")
            self._file = new_staged(name, raw_name)
            self.form.files.setdefault(name, []).append(self._file)
        else:
            self._n_fields += 1
            if self._n_fields > self.limits.max_fields:
                raise ApiError("validation_error", f"more than {self.limits.max_fields} form fields")
            self._field_name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.size += end - start
            if self._file.size > self.limits.max_file_bytes:
                raise ApiError("file_too_large",
                    f"{self._file.name}: larger than the limit of {self.limits.max_file_bytes} bytes",
                )
            self.pending.append((self._file, bytes(data[start:end])))
        else:
            self._field_data += data[start:end]
            if len(self._field_data) > self.limits.max_field_bytes:
                raise ApiError("validation_error", f"form field {self._field_name!r} is too long")

    def on_part_end(self) -> None:
        if self._file is None and self._field_name is not None:
            self.form.fields[self._field_name] = _text(bytes(self._field_data), f"form field {self._field_name!r}")

    def on_end(self) -> None:
        self.finished = True

    def flush(self) -> None:
        """Write and hash the queued bytes (runs in a worker thread: disk I/O and hashing block)."""
        pending, self.pending = self.pending, []
        for staged, data in pending:
            staged.write(data)


def _boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise ApiError("unsupported_media_type", "send the files as multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError("validation_error", "multipart/form-data without a boundary")
    return boundary


async def read_multipart(request: Request, limits: MultipartLimits) -> MultipartForm:
    """Receive a whole multipart body into staged files; raises ``ApiError`` (413/415/422) on bad bodies."""
    boundary = _boundary(request)
    form = MultipartForm()
    receiver = _Receiver(limits, form)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        async for chunk in request.stream():
            if not chunk:
                continue
            parser.write(chunk)
            if receiver.pending:
                await to_thread.run_sync(receiver.flush)
        parser.finalize()
        if not receiver.finished:
            raise ApiError("validation_error", "the multipart body ends before its closing boundary")
        for staged in form.all_files():
            staged.rewind()
    except FormParserError as exc:
        form.close()
        raise ApiError("validation_error", f"malformed multipart body: {exc}") from exc
    except BaseException:
        form.close()
        raise
    return form


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def ext(self) -> str:
        return _EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.format]


def inspect_image(staged: StagedFile, max_pixels: int) -> ImageInfo:
    """Format (sniffed), size (from the header) and end marker of an uploaded photo.

    Raises ``PikFixInputError`` with the codes the worker's decoder uses: ``empty_file``,
    ``not_an_image``, ``unsupported_format``, ``too_many_pixels``, ``truncated_image``, ``corrupt_image``.
    """
    if staged.size == 0:
        raise PikFixInputError("empty_file", "the file is empty (0 bytes)")
    fmt = sniff_image_format(staged.head)
    if fmt is None:
        raise PikFixInputError("not_an_image", "the file is not an image (its first bytes match no image format)")
    missing_end = missing_end_marker(fmt, staged.head, staged.tail, staged.size)
    # Pillow refuses anything over twice its own (process-wide) limit before we can look; ours decides.
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(staged.rewind(), fmt, first_frame=False) as image:  # refuses unsupported formats
                width, height = image.size
    except PikFixInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise PikFixInputError("too_many_pixels", "the image header declares more pixels than the limit") from exc
    except Exception as exc:  # Pillow raises many types for damaged headers; all mean bad input here
        if missing_end:
            raise PikFixInputError("truncated_image", f"the {fmt.upper()} file is cut off") from exc
        raise PikFixInputError("corrupt_image", f"the {fmt.upper()} header is damaged") from exc
    finally:
        staged.rewind()
    if width <= 0 or height <= 0:
        raise PikFixInputError("corrupt_image", f"the image header declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise PikFixInputError(
            "too_many_pixels",
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.1f}",
        )
    if missing_end:
        raise PikFixInputError("truncated_image", f"the {fmt.upper()} file ends before its image data does")
    return ImageInfo(fmt, width, height)


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_uncompressed_bytes: int
    max_ratio: float


def inspect_archive(staged: StagedFile, limits: ArchiveLimits) -> int:
    """Check a zip from its central directory (nothing is inflated); returns the number of file members.

    The ingest worker checks again while inflating, so a forged directory cannot get past both.
    """
    if staged.size == 0:
        raise ApiError("empty_file", "the archive is empty (0 bytes)")
    if not staged.head.startswith(_ZIP_MAGIC):
        raise ApiError("not_an_archive", "the file is not a zip archive (its first bytes are not 'PK')")
    try:
        with zipfile.ZipFile(staged.rewind()) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ApiError("bad_archive", f"not a readable zip archive: {exc}") from exc
    finally:
        staged.rewind()
    if len(infos) > limits.max_members:
        raise ApiError("archive_too_many_members", f"{len(infos)} members, limit {limits.max_members}")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_uncompressed_bytes:
        raise ApiError("archive_too_large",
                       f"{declared} bytes uncompressed, limit {limits.max_uncompressed_bytes}")
    compressed = sum(i.compress_size for i in infos) or 1
    if declared / compressed > limits.max_ratio:
        raise ApiError("zip_bomb", f"compression ratio {declared / compressed:.0f} exceeds {limits.max_ratio:.0f}")
    if not any(posixpath.splitext(i.filename)[1].lower() in IMAGE_EXTENSIONS for i in infos):
        raise ApiError("archive_empty",
                       f"the archive holds no photos ({len(infos)} files, none named as an image)")
    return len(infos)


# --------------------------------------------------------------------------- form contents


def take_files(form: MultipartForm, accepted: tuple[str, ...]) -> list[StagedFile]:
    """The files sent under the ``accepted`` field names; 422 for none, or for files under other names."""
    unknown = sorted(set(form.files) - set(accepted))
    if unknown:
        raise ApiError("validation_error", f"unexpected file field(s) {unknown}; send files as {accepted[0]!r}")
    files = [f for name in accepted for f in form.files.get(name, [])]
    if not files:
        raise ApiError("validation_error", f"no file sent; send one or more files as {accepted[0]!r}")
    return files


def take_fields(form: MultipartForm, allowed: tuple[str, ...]) -> dict[str, str]:
    """The plain form fields, refusing names outside ``allowed`` (a typo must not pass silently)."""
    unknown = sorted(set(form.fields) - set(allowed))
    if unknown:
        raise ApiError("validation_error", f"unexpected form field(s) {unknown}; allowed: {list(allowed)}")
    return {k: v.strip() for k, v in form.fields.items() if v.strip()}


# --------------------------------------------------------------------------- client digests (fixity)

_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_SHA256_MEMBER = re.compile(r"^\s*sha-256\s*=\s*:([A-Za-z0-9+/=]+):\s*$")


def parse_digest(value: str, what: str) -> str:
    """A client's SHA-256 as lowercase hex: RFC 9530's ``sha-256=:<base64>:`` (other algorithms of the
    list are ignored) or plain hex; 422 ``validation_error`` naming ``what`` for anything else."""
    if _HEX_DIGEST.match(value.strip()):
        return value.strip().lower()
    for member in value.split(","):
        match = _SHA256_MEMBER.match(member)
        if match is None:
            continue
        try:
            raw = base64.b64decode(match.group(1), validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) == 32:
            return raw.hex()
    raise ApiError("validation_error", f"{what}: give the SHA-256 as 'sha-256=:<base64>:' (RFC 9530) or 64 hex "
                                       f"digits, got {value[:100]!r}")


def content_digest(sha256_hex: str) -> str:
    """The ``Content-Digest`` header value (RFC 9530) of bytes whose SHA-256 is ``sha256_hex``."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode('ascii')}:"


def digests_field(form: MultipartForm) -> dict[str, str]:
    """The ``digests`` form field of a multipart upload: a JSON object of file name -> digest."""
    raw = form.fields.get("digests", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ApiError("validation_error", f"digests: not JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ApiError("validation_error", "digests: send a JSON object of file name -> digest")
    return value


def verify_digests(files: list[StagedFile], digests: dict[str, str], *, key=lambda name: name) -> None:
    """Check each file named in ``digests`` against its SHA-256 before anything is stored: 422
    ``digest_mismatch`` naming the first that differs, ``validation_error`` for a name no file has.
    ``key`` maps a file's name to the form the client's names take (e.g. the stored, sanitised name)."""
    expected = {key(name): parse_digest(value, f"digests[{name!r}]") for name, value in digests.items()}
    present = {key(f.name) for f in files}
    unknown = sorted(set(expected) - present)
    if unknown:
        raise ApiError("validation_error", f"digests name file(s) that were not sent: {unknown[:10]}")
    for staged in files:
        want = expected.get(key(staged.name))
        if want is not None:
            check_digest(staged, want)


def check_digest(staged: StagedFile, expected_hex: str) -> None:
    """422 ``digest_mismatch`` unless the file's SHA-256 is ``expected_hex``."""
    if staged.sha256 != expected_hex:
        raise ApiError("digest_mismatch", f"{staged.name}: the client's SHA-256 is {expected_hex}, the bytes "
                                          f"received hash to {staged.sha256}; nothing was stored",
                       details={"name": staged.name, "expected": expected_hex, "received": staged.sha256})


# --------------------------------------------------------------------------- storage


def store_image(
    store: ObjectStore,
    tenant_id: str,
    staged: StagedFile,
    info: ImageInfo,
    kind: Literal["original", "reference"] = "original",
) -> str:
    """Store a checked image under its content-addressed key (once: the same bytes share a key)."""
    make_key = original_key if kind == "original" else reference_key
    key = make_key(tenant_id, staged.sha256, info.ext)
    if not store.exists(key):
        store.put_stream(key, staged.rewind(), content_type=info.content_type)
    return key


@dataclass
class CheckedImage:
    staged: StagedFile
    info: ImageInfo
    key: str


def check_and_store_images(
    store: ObjectStore,
    tenant_id: str,
    files: list[StagedFile],
    max_pixels: int,
    kind: Literal["original", "reference"] = "original",
) -> tuple[list[CheckedImage], list[Rejected]]:
    """Check every file; store the good ones content-addressed and list the others with their reason."""
    stored: list[CheckedImage] = []
    rejected: list[Rejected] = []
    for staged in files:
        try:
            info = inspect_image(staged, max_pixels)
        except PikFixInputError as exc:
            rejected.append(Rejected(name=staged.name, code=exc.code, message=exc.message))
            continue
        stored.append(CheckedImage(staged, info, store_image(store, tenant_id, staged, info, kind)))
    return stored, rejected


def refuse_all(rejected: list[Rejected]) -> ApiError:
    """Every file was refused: answer with the first one's status and code, listing all of them."""
    first = rejected[0]
    message = f"{first.name}: {first.message}"
    if len(rejected) > 1:
        message += f" (and {len(rejected) - 1} more file(s) refused)"
    return ApiError(first.code, message, details=[r.model_dump() for r in rejected])


def is_archive_name(name: str) -> bool:
    """A presigned upload that the submit hands to the ingest task rather than registering as a photo."""
    return name.lower().endswith(".zip")


def archive_key(tenant_id: str, batch_id: str, name: str) -> str:
    """Where an uploaded archive waits for the ingest task; apart from ``uploads/`` (presigned photos)."""
    stem = safe_filename(name, default="archive.zip")
    return f"{tenant_id}/archives/{batch_id}/{uuid.uuid4().hex[:12]}-{stem}"


# --------------------------------------------------------------------------- request size limit


class RequestSizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (from Content-Length up front, else as they stream).

    A body that crosses the limit while streaming raises from ``receive``, inside the handler that
    reads it, so it is answered by the normal error handlers with 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(send, "request_too_large",
                             f"the request body is {declared} bytes, over the limit of {self.max_bytes}")
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException (not ApiError) because FastAPI re-raises only those from body parsing;
                    # the error handlers answer it as 413 ``request_too_large``.
                    raise HTTPException(status_of("request_too_large"), f"the request body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, code: str, message: str) -> None:
    """An error answered by a middleware, below the app's handlers: same shape, the registry's status."""
    await _send_json(send, status_of(code), error_body(code, message))


__all__ = [
    "ArchiveLimits",
    "CheckedImage",
    "check_and_store_images",
    "refuse_all",
    "take_fields",
    "take_files",
    "ImageInfo",
    "MultipartForm",
    "MultipartLimits",
    "RequestSizeLimit",
    "StagedFile",
    "archive_key",
    "inspect_archive",
    "inspect_image",
    "new_staged",
    "read_multipart",
    "send_error",
    "stage_stream",
    "store_image",
]
