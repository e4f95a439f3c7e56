"""Engines and sessions for PostgreSQL (distributed mode) and SQLite (embedded default).

One engine per URL per process, created lazily. Celery's prefork workers must call
:func:`dispose_engines` in ``worker_process_init`` so a child never reuses its parent's sockets.
SQLite transactions start with ``BEGIN IMMEDIATE``, so read-then-update sequences hold under
concurrency: keep them short, never open a second session in the same thread while one is open
(:class:`NestedTransactionError`), and read with ``session_scope(readonly=True)``. Why, and the other
SQLite settings: docs/reliability.md, "SQLite in embedded mode".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_S = 30.0
_READONLY_OPTION = "pikfix_readonly"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
# One session factory per engine and mode: building a sessionmaker per request showed up in profiles.
_factories: dict[tuple[str, bool], tuple[Engine, sessionmaker[Session]]] = {}

# SQLite write transactions open right now: id(DBAPI connection) -> (thread id, database path).
_sqlite_writers: dict[int, tuple[int, str]] = {}
_sqlite_writers_lock = threading.Lock()


class NestedTransactionError(RuntimeError):
    """A thread began a second SQLite write transaction while its first still holds the lock."""


def default_url() -> str:
    """The configured database URL (``PIKFIX_DATABASE_URL`` or the embedded SQLite file)."""
    from service.settings import get_settings

    return get_settings().resolved_database_url


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (it would skip BEGIN for SELECTs).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL never corrupts; a power cut (not a process crash) may lose the last commits.
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    database = str(engine.url.database)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_READONLY_OPTION, False):
            conn.exec_driver_sql("BEGIN")
            return
        me, key = threading.get_ident(), id(conn.connection.dbapi_connection)
        with _sqlite_writers_lock:
            if (me, database) in {v for k, v in _sqlite_writers.items() if k != key}:
                raise NestedTransactionError(
                    "this thread already has an open write transaction on this SQLite database; a second "
                    "session would wait on the first forever. Commit the first session before opening "
                    "another (or open the inner one with readonly=True)."
                )
            _sqlite_writers[key] = (me, database)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _forget(conn)
            raise

    def _forget(conn: Connection) -> None:
        with _sqlite_writers_lock:
            _sqlite_writers.pop(id(conn.connection.dbapi_connection), None)

    event.listen(engine, "commit", _forget)
    event.listen(engine, "rollback", _forget)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn: Any, _record: Any) -> None:
        with _sqlite_writers_lock:
            _sqlite_writers.pop(id(dbapi_conn), None)


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        }
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool  # one shared connection, or every session sees a new database
        else:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine)
        return engine
    # PostgreSQL (and anything else): detect connections the server or a proxy dropped; keep the
    # pool modest because every worker process and API process has its own.
    # Bounded waits: a database that accepts connections but never answers must fail requests and
    # tasks within seconds (workers retry with backoff; /readyz reports it), not hang them.
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": 5, "options": "-c statement_timeout=30000"}
    return create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_recycle=1800,
        pool_timeout=30,
        connect_args=connect_args,
    )


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the configured database), created on first use."""
    url = url or default_url()
    engine = _engines.get(url)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(url)
            if engine is None:
                engine = _engines[url] = _create_engine(url)
    return engine


def dispose_engine(url: str, close: bool = True) -> None:
    """Forget the engine for ``url`` and close its pooled connections (tests dropping a database)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
        _factories.clear()
    if engine is not None:
        engine.dispose(close=close)


def dispose_engines(close: bool = False) -> None:
    """Drop every cached engine; call with ``close=False`` in a freshly forked child process.

    ``close=False`` leaves the parent's connections alone (closing them from the child would
    break the parent) and simply stops this process from using them.
    """
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
        _factories.clear()
    for engine in engines:
        engine.dispose(close=close)


def make_sessionmaker(url: str | None = None, *, readonly: bool = False) -> sessionmaker[Session]:
    """A session factory bound to the cached engine for ``url``.

    ``expire_on_commit=False`` keeps returned rows readable after the transaction ends, which is
    what the API needs to serialise a job it has just created.
    """
    engine = get_engine(url)
    key = (engine.url.render_as_string(hide_password=False), readonly)
    cached = _factories.get(key)
    if cached is not None and cached[0] is engine:
        return cached[1]
    bind = engine.execution_options(**{_READONLY_OPTION: True}) if readonly else engine
    factory = sessionmaker(bind=bind, expire_on_commit=False)
    _factories[key] = (engine, factory)
    return factory


@contextmanager
def session_scope(url: str | None = None, *, readonly: bool = False) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back on any exception."""
    session = make_sessionmaker(url, readonly=readonly)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
