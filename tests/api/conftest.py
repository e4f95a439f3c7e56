"""Fixtures for the API tests: a fresh SQLite database, a local object folder and eager tasks per test,
with the suite's tiny checkpoint (tests/conftest.py) loaded once for the whole run."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from db import repository as repo
from db.migrate import upgrade
from db.session import dispose_engine, session_scope
from pikfix.config import PikFixConfig
from service.settings import Settings

TINY_CONFIG = PikFixConfig.tiny()  # test_api_integration.py builds its own checkpoint from it

MAX_UPLOAD = 256 * 1024
MAX_REQUEST = 1024 * 1024
MAX_PIXELS = 1_000_000


# --------------------------------------------------------------------------- images


def png_bytes(width: int = 64, height: int = 48, mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def corrupt_png() -> bytes:
    """Header and end marker intact, pixel data damaged: passes the upload check, fails the full decode."""
    data = bytearray(png_bytes(64, 48, seed=5))
    start = data.find(b"IDAT") + 20
    for i in range(start, start + 40):
        data[i] ^= 0x5A
    return bytes(data)


def big_png_bytes(width: int, height: int) -> bytes:
    """A flat image: tiny file, many pixels (the decompression-bomb shape)."""
    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, "PNG", optimize=True)
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


# --------------------------------------------------------------------------- model


@dataclass
class SharedModels:
    checkpoint: Path
    restorer: object
    extractor: object


@pytest.fixture(scope="session")
def shared_models(tiny_checkpoint: Path) -> SharedModels:
    """Loaded once: each test's runtime gets these instead of loading its own."""
    from pikfix.inference import Restorer
    from pikfix.retrieval import DescriptorExtractor

    restorer = Restorer.from_checkpoint(str(tiny_checkpoint), device="cpu", working_size=64)
    extractor = DescriptorExtractor(device="cpu", size=64)
    return SharedModels(tiny_checkpoint, restorer, extractor)


# --------------------------------------------------------------------------- app


@dataclass
class ApiHarness:
    client: TestClient
    settings: Settings
    app: object
    tenant_a: str
    tenant_b: str
    key_a: str
    key_b: str

    @property
    def a(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key_a}"}

    @property
    def b(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key_b}"}

    @property
    def database_url(self) -> str:
        return self.settings.resolved_database_url

    @property
    def store(self):
        return self.app.state.ctx.store  # type: ignore[attr-defined]


def make_settings(tmp_path: Path, checkpoint: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite:///{tmp_path / 'api.db'}",
        "broker_url": None,
        "storage_url": None,
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "working_size": 64,
        "max_upload_bytes": MAX_UPLOAD,
        "max_request_bytes": MAX_REQUEST,
        "max_image_pixels": MAX_PIXELS,
        "max_archive_members": 50,
        "job_max_attempts": 3,
        "reference_refresh_s": 0,  # tests add references and run a job at once
    }
    values.update(overrides)
    return Settings(**values)


def make_runtime(settings: Settings, models: SharedModels):
    from workers.runtime import WorkerRuntime

    runtime = WorkerRuntime(settings, hostname="api-test")
    runtime.__dict__["restorer"] = models.restorer  # cached_property slots: share the loaded model
    runtime.__dict__["extractor"] = models.extractor
    return runtime


def tenant_with_key(url: str, name: str) -> tuple[str, str]:
    with session_scope(url) as s:
        tenant = repo.create_tenant(s, name)
        key, _ = repo.create_api_key(s, tenant.id, name="test")
        return tenant.id, key


@pytest.fixture
def api(tmp_path: Path, shared_models: SharedModels) -> Iterator[ApiHarness]:
    """The API in-process: fresh SQLite database, local object folder, eager tasks, two tenants."""
    from api.app import create_app

    settings = make_settings(tmp_path, shared_models.checkpoint)
    url = settings.resolved_database_url
    upgrade(url)
    tenant_a, key_a = tenant_with_key(url, "bureau-a")
    tenant_b, key_b = tenant_with_key(url, "bureau-b")
    app = create_app(settings, runtime=make_runtime(settings, shared_models))
    with TestClient(app) as client:
        yield ApiHarness(client, settings, app, tenant_a, tenant_b, key_a, key_b)
    from workers.runtime import set_runtime

    set_runtime(None)
    dispose_engine(url)
