"""Reading uploaded zip archives safely: no path traversal, no symlinks, no zip bombs.

Limits are checked from the central directory before anything is decompressed, and again while
streaming each member (a forged header cannot make us inflate more than it declared).
"""

from __future__ import annotations

import lzma
import posixpath
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}


class ArchiveError(ValueError):
    """The archive as a whole is refused; ``code`` is stable (API and job records use it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Member:
    name: str
    data: bytes


@dataclass
class Skipped:
    name: str
    reason: str


def _unsafe_name(name: str) -> str | None:
    if not name or "\x00" in name:
        return "empty or NUL in name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "path traversal (..)"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def iter_images(
    fileobj: IO[bytes],
    max_members: int,
    max_total_bytes: int,
    max_ratio: float,
    max_member_bytes: int,
) -> Iterator[Member | Skipped]:
    """Yield each image member's bytes, or a ``Skipped`` with the reason it was not taken."""
    try:
        archive = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError("bad_archive", f"not a readable zip archive: {exc}") from exc
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > max_members:
            raise ArchiveError("archive_too_many_members", f"{len(infos)} members, limit {max_members}")
        declared = sum(i.file_size for i in infos)
        if declared > max_total_bytes:
            raise ArchiveError("archive_too_large", f"{declared} bytes uncompressed, limit {max_total_bytes}")
        compressed = sum(i.compress_size for i in infos) or 1
        if declared / compressed > max_ratio:
            raise ArchiveError("zip_bomb", f"compression ratio {declared / compressed:.0f} exceeds {max_ratio:.0f}")
        inflated = 0
        for info in infos:
            reason = _unsafe_name(info.filename)
            if reason:
                yield Skipped(info.filename, f"refused name: {reason}")
                continue
            if _is_symlink(info):
                yield Skipped(info.filename, "symbolic link")
                continue
            base = posixpath.basename(info.filename.replace("\\", "/"))
            if base.startswith(".") or "__MACOSX" in info.filename:
                yield Skipped(info.filename, "hidden or metadata file")
                continue
            if posixpath.splitext(base)[1].lower() not in IMAGE_EXTENSIONS:
                yield Skipped(info.filename, "not an image file name")
                continue
            if info.file_size > max_member_bytes:
                yield Skipped(info.filename, f"member larger than {max_member_bytes} bytes")
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(info.file_size + 1)
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
                yield Skipped(info.filename, f"unreadable member: {exc}")
                continue
            if len(data) > info.file_size:
                raise ArchiveError("zip_bomb", f"{info.filename} inflates past its declared size")
            inflated += len(data)
            if inflated > max_total_bytes:
                raise ArchiveError("archive_too_large", "archive inflates past the total size limit")
            yield Member(info.filename, data)
