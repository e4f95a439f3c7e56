"""Walking the folder: which files go to the API, and which are skipped (with the reason said).

The checks mirror what the API refuses (its extension-free sniffing of the first bytes, and the end
marker of formats that have one), so a refused file costs no upload and is reported by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pikfix_client.names import MAX_NAME, encode_name
from pikfix_client.results import Skipped

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp",
                              ".jp2", ".j2k", ".j2c", ".jpf", ".jpx"})
ARCHIVE_EXTENSIONS = frozenset({".zip"})
HEAD_BYTES = 64
TAIL_BYTES = 4096
STATE_PREFIX = ".pikfix-"  # the client's own files in the folder: never uploaded, never reported


@dataclass(frozen=True)
class Candidate:
    """A file to upload: where it is, its path relative to the folder and the name it is uploaded as."""

    path: Path
    rel: str
    name: str
    size: int
    mtime_ns: int

    @property
    def is_archive(self) -> bool:
        return self.name.lower().endswith(".zip")


def sniff(head: bytes) -> str | None:
    """The image format the first bytes name (the API's own rule), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "bmp"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "jpeg2000"
    return None


def cut_off(fmt: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether a file lacks the end its format declares: the API refuses it as ``truncated_image``."""
    if fmt == "png":
        return b"IEND" not in tail[-64:]
    if fmt == "jpeg":
        return b"\xff\xd9" not in tail[-TAIL_BYTES:]
    if fmt == "gif":
        return not tail.rstrip(b"\x00").endswith(b";")
    if fmt == "webp" and len(head) >= 8:
        return int.from_bytes(head[4:8], "little") + 8 > size
    return False


def refusal(path: Path, size: int) -> str | None:
    """Why the API would refuse this file, judged from its extension and bytes; None if it would not."""
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS and ext not in ARCHIVE_EXTENSIONS:
        return f"not a photo or .zip archive by its extension ({ext or 'none'})"
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read(TAIL_BYTES)
    if ext in ARCHIVE_EXTENSIONS:
        return None if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") else "not a zip archive (its first bytes)"
    fmt = sniff(head)
    if fmt is None:
        return "not an image (its first bytes match no image format the API takes)"
    if cut_off(fmt, head, tail, size):
        return f"truncated {fmt.upper()} (its end marker is missing)"
    return None


def _walk(root: Path) -> Iterator[tuple[Path, str] | Skipped]:
    """Every file under ``root`` in a stable order, hidden files and folders reported as skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        for d in sorted(dirnames):
            if d.startswith("."):
                yield Skipped(f"{rel_dir}/{d}/".removeprefix("./"), "hidden folder")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if name.startswith(STATE_PREFIX) and rel_dir == ".":
                continue
            if name.startswith("."):
                yield Skipped(rel, "hidden file")
                continue
            yield here / name, rel


def scan_folder(root: Path, exclude: frozenset[Path] = frozenset()) -> tuple[list[Candidate], list[Skipped]]:
    """The files to upload and those skipped, both in path order."""
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for item in _walk(root):
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        path, rel = item
        if path.resolve() in exclude:
            continue
        try:
            st = path.stat()
            if not path.is_file():
                skipped.append(Skipped(rel, "not a regular file"))
                continue
            why = refusal(path, st.st_size)
        except OSError as exc:
            skipped.append(Skipped(rel, f"unreadable: {exc.strerror or exc}"))
            continue
        name = encode_name(rel)
        if why is None and len(name) > MAX_NAME:
            why = f"path too long to name ({len(name)} characters once escaped, the API keeps {MAX_NAME})"
        if why is not None:
            skipped.append(Skipped(rel, why))
            continue
        candidates.append(Candidate(path, rel, name, st.st_size, st.st_mtime_ns))
    return candidates, skipped
