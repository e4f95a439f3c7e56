"""The db tests run on both backends: SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import pytest

from db import migrate
from db.session import dispose_engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest):
    """A migrated database on each backend."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate.upgrade(url)
    yield url
    dispose_engine(url)
