"""Keyset pagination cursors: an opaque token for the (created_at, id) of a page's last row."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime

from db.models import InvalidCursor

_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor names; ``InvalidCursor`` for anything a client made up."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("malformed pagination cursor") from exc
    # The id goes into the query: only an id's exact shape may (a NUL byte would be a 500 on PostgreSQL).
    if created_at.tzinfo is None or not _ID_RE.fullmatch(row_id):
        raise InvalidCursor("malformed pagination cursor")
    return created_at, row_id
