"""The submit state file: a small SQLite database beside the folder (``.pikfix-submit.sqlite``).

It records the batch (its idempotency token before the batch exists, then its id), every file's
SHA-256 and whether it is uploaded, and the references sent. Each change is one SQLite transaction,
so a client killed at any instant (SIGKILL included) leaves the file as it was before or after the
change, never half-written; the next run trusts it and uploads only what is missing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pikfix_client.errors import StateError
from pikfix_client.scan import Candidate

DEFAULT_NAME = ".pikfix-submit.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY, rel TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL, uploaded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS refs (
    rel TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    reference_id TEXT, refused TEXT
);
"""


class SubmitState:
    """One folder's submit progress; safe to share between upload threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a killed process loses nothing committed
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot use the state file {path}: {exc}; pass --state with a writable path") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, *params: Any) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def _rows(self, sql: str, *params: Any) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- batch
    def get(self, key: str) -> Any:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", key)
        return json.loads(rows[0][0]) if rows else None

    def set(self, key: str, value: Any) -> None:
        self._write("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    key, json.dumps(value))

    # -- files
    def uploaded(self) -> dict[str, tuple[int, int, str]]:
        """name -> (size, mtime_ns, sha256) of every file recorded as uploaded."""
        return {n: (s, m, h) for n, s, m, h in self._rows(
            "SELECT name, size, mtime_ns, sha256 FROM files WHERE uploaded = 1")}

    def is_current(self, c: Candidate, done: dict[str, tuple[int, int, str]]) -> bool:
        """Uploaded, and the file has not changed (size and modification time) since."""
        row = done.get(c.name)
        return row is not None and row[0] == c.size and row[1] == c.mtime_ns

    def mark_uploaded(self, c: Candidate, size: int, sha256: str) -> None:
        self._write(
            "INSERT INTO files (name, rel, size, mtime_ns, sha256, uploaded) VALUES (?, ?, ?, ?, ?, 1) "
            "ON CONFLICT (name) DO UPDATE SET rel = excluded.rel, size = excluded.size, "
            "mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, uploaded = 1",
            c.name, c.rel, size, c.mtime_ns, sha256)

    def forget_uploads(self, names: list[str]) -> None:
        """The API says these are not (or not intact) in the store: upload them again."""
        with self._lock:
            self._db.executemany("UPDATE files SET uploaded = 0 WHERE name = ?", [(n,) for n in names])

    # -- references
    def references(self) -> dict[str, tuple[int, int, str, str | None, str | None]]:
        """rel -> (size, mtime_ns, sha256, reference_id, refused reason)."""
        return {r[0]: tuple(r[1:]) for r in self._rows(
            "SELECT rel, size, mtime_ns, sha256, reference_id, refused FROM refs")}

    def record_reference(self, c: Candidate, sha256: str, reference_id: str | None, refused: str | None) -> None:
        self._write(
            "INSERT INTO refs (rel, size, mtime_ns, sha256, reference_id, refused) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (rel) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "sha256 = excluded.sha256, reference_id = excluded.reference_id, refused = excluded.refused",
            c.rel, c.size, c.mtime_ns, sha256, reference_id, refused)
