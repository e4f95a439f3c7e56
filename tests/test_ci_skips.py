"""Under CI=true a skip fails, unless the test is marked as needing hardware the machine lacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = """
import pytest

@pytest.fixture
def service():
    pytest.skip("no server here")

def test_plain_skip():
    pytest.skip("not installed")

@pytest.mark.skipif(True, reason="no tool")
def test_skipif():
    pass

def test_skip_in_a_fixture(service):
    pass

@pytest.mark.needs_gpu
def test_gpu():
    pytest.skip("no CUDA device")

@pytest.mark.needs_container_engine
@pytest.mark.skipif(True, reason="no docker")
def test_container():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

def test_pass():
    pass
"""

GONE = "import pytest\n\npytest.skip('no driver', allow_module_level=True)\n"
PYTEST = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-v"]


@pytest.mark.parametrize("ci", ["true", "false"])
def test_a_skip_fails_under_ci_unless_marked_as_needing_hardware(tmp_path: Path, ci: str) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_gone.py").write_text(GONE)
    # A fresh pytest run in a folder of its own, with this suite's conftest as a plugin.
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "CI": ci, "PYTHONPATH": path}
    run = subprocess.run([*PYTEST, "--continue-on-collection-errors", "."], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    out, strict = run.stdout, ci == "true"
    assert dict(re.findall(r"^test_sample\.py::(\w+) ([A-Z]+)", out, re.M)) == {
        "test_plain_skip": "FAILED" if strict else "SKIPPED",
        "test_skipif": "ERROR" if strict else "SKIPPED",  # skipped at setup: an error under CI
        "test_skip_in_a_fixture": "ERROR" if strict else "SKIPPED",
        "test_gpu": "SKIPPED",
        "test_container": "SKIPPED",
        "test_xfail": "XFAIL",
        "test_pass": "PASSED",
    }, out + run.stderr
    assert run.returncode == (1 if strict else 0)
    assert ("Skipped: not installed, but under CI=true only tests marked needs_gpu" in out) is strict
    assert ("ERROR test_gone.py - Skipped: no driver, but under CI=true" in out) is strict  # a whole module
