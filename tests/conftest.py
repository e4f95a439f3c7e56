"""Suite-wide fixtures and rules: the real services in ``tests/fixtures``, one tiny checkpoint, and under
``CI=true`` a skip is a failure unless the test is marked as needing hardware the machine lacks."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

try:  # tests/ is not a package: pytest puts it on sys.path, so the folder imports as ``fixtures``
    from fixtures.services import *  # noqa: F403
    from fixtures.services import mark_integration
except ModuleNotFoundError:  # tests/ made a package later: import it by its full name
    from tests.fixtures.services import *  # noqa: F403
    from tests.fixtures.services import mark_integration

HARDWARE_MARKERS = {
    "needs_gpu": "needs a CUDA device; may skip where there is none, even under CI=true",
    "needs_container_engine": "needs docker (compose); may skip where there is none, even under CI=true",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in HARDWARE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that start real servers are integration tests even if their author forgot the marker,
    # so `-m "not integration"` always gives a quick, server-free run.
    mark_integration(items)


def _strict() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"{reason}, but under CI=true only tests marked {' or '.join(HARDWARE_MARKERS)} skip"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    hardware = any(item.get_closest_marker(name) for name in HARDWARE_MARKERS)
    if _strict() and report.skipped and not hasattr(report, "wasxfail") and not hardware:
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report() -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if _strict() and report.skipped:  # a module skipped as a whole: no test in it can carry a marker
        _fail_skip(report)
    return report


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``PikFixConfig.tiny()`` at random weights (seed 0), saved once per run; treat it as read-only."""
    import torch

    from pikfix.checkpoint import save_checkpoint
    from pikfix.config import PikFixConfig
    from pikfix.model import PikFix

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PikFix(PikFixConfig.tiny()).eval()
    save_checkpoint(path, model, metadata={"training_steps": 0, "notes": "random tiny model for tests"})
    return path
