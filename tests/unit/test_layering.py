"""Layers stay apart: the model library and the object store import no service code, db no upper layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "pikfix": {"api", "workers", "db", "service", "storage"},  # usable on its own, like torchvision
    "storage": {"api", "workers", "db", "service"},
    "db": {"api", "workers"},
    "workers": {"api"},
}


def _imported_packages(path: Path) -> set[str]:
    """Top-level names of every import, in functions too, and of ``module:function`` strings loaded lazily."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and re.fullmatch(r"[\w.]+:\w+", str(node.value)):
            names.add(str(node.value).split(".")[0].split(":")[0])  # a "module:function" target imported lazily
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_upper_layer(package: str) -> None:
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    found = {f"{m.relative_to(REPO)}: {sorted(bad)}" for m in modules
             if (bad := _imported_packages(m) & FORBIDDEN[package])}
    assert not found, f"{package}/ imports from a layer above it: {sorted(found)}"
