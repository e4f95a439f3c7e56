"""A file's relative path inside the folder as the name it is uploaded under, and back.

The API stores a presigned upload under one flat, plain name (letters, digits, ``.``, ``_``, ``-``;
no ``/``), so the path is escaped reversibly: ``-`` followed by two hex digits stands for a byte of
the UTF-8 path (``/`` is ``-2f``, ``-`` itself ``-2d``), and a ``.`` or ``_`` at either end is
escaped too (the API would strip it). ``fetch`` turns the job's name back into the path to mirror.
"""

from __future__ import annotations

import re

MAX_NAME = 150  # longer names are cut by the API, so they could not be mapped back
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._")
_ENCODED = re.compile(r"(?:[A-Za-z0-9._]|-[0-9a-f]{2})+")


def encode_name(rel_path: str) -> str:
    """``scans/1931 a.jpg`` -> ``scans-2f1931-20a.jpg``; the extension stays last and readable."""
    raw = rel_path.encode("utf-8")
    out = []
    for i, byte in enumerate(raw):
        at_edge = i == 0 or i == len(raw) - 1
        if byte in _PLAIN and not (at_edge and byte in b"._"):
            out.append(chr(byte))
        else:
            out.append(f"-{byte:02x}")
    return "".join(out)


def decode_name(name: str) -> str:
    """The relative path ``encode_name`` made ``name`` from; a name it did not make comes back unchanged."""
    if "/" in name or not _ENCODED.fullmatch(name):
        return name
    try:
        return _unescape(name)
    except UnicodeDecodeError:
        return name


def _unescape(name: str) -> str:
    data = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "-":
            data.append(int(name[i + 1:i + 3], 16))
            i += 3
        else:
            data.append(ord(name[i]))
            i += 1
    return data.decode("utf-8")
