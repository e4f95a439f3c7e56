"""Suite-wide fixtures: the real services in ``tests/fixtures`` are available to every test."""

from __future__ import annotations

import pytest

try:  # tests/ is not a package: pytest puts it on sys.path, so the folder imports as ``fixtures``
    from fixtures.services import *  # noqa: F403
    from fixtures.services import mark_integration
except ModuleNotFoundError:  # tests/ made a package later: import it by its full name
    from tests.fixtures.services import *  # noqa: F403
    from tests.fixtures.services import mark_integration


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that start real servers are integration tests even if their author forgot the marker,
    # so `-m "not integration"` always gives a quick, server-free run.
    mark_integration(items)
