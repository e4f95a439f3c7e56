"""The database layer: SQLAlchemy 2.x models, Alembic migrations and every query the service runs.

Queries are reached through one module, ``from db import repository as repo``; models, errors and
sessions come from ``db.models`` and ``db.session``. This package re-exports nothing, so each name
has one import path. Works on PostgreSQL (distributed mode) and SQLite (the embedded default); the
schema is created only by the migrations (``pikfix db upgrade`` or :func:`db.migrate.upgrade`).
"""
