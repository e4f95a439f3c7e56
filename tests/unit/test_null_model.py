"""The null model (``PIKFIX_CHECKPOINT=null``): the real restorer's interface and result, no restoration.

Checked for what it returns (the input's luminance in grey, zero chroma, full size, its provenance)
and for what it is for: a worker runtime configured with ``null`` builds it, and a whole embedded
``pikfix restore`` run goes through the real job pipeline with it, recording the null model's name.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db.models import Job
from db.session import dispose_engine, session_scope
from pikfix.color import rgb_to_lab_np
from pikfix.inference import RestoreResult, luminance_of, working_shape
from pikfix.null_model import NULL_CHECKPOINT_SHA256, NullRestorer, grey_rgb, is_null_checkpoint, luminance
from service.cli import main
from service.settings import Settings
from workers.runtime import WorkerRuntime, set_runtime


def _scene(height: int, width: int, colour: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.4 * np.sin(x / 7.0) * np.cos(y / 5.0)
    if not colour:
        return (np.clip(base, 0, 1) * 255).astype(np.uint8)
    tint = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    return (np.clip(np.stack([base * t for t in tint], axis=-1), 0, 1) * 255).astype(np.uint8)


def test_grey_input_comes_back_unchanged_at_full_size() -> None:
    grey = _scene(37, 53, colour=False)
    result = NullRestorer(working_size=16).restore(grey)
    assert isinstance(result, RestoreResult)
    assert result.rgb.shape == (37, 53, 3) and result.rgb.dtype == np.float32
    assert np.array_equal(result.rgb[..., 0], result.rgb[..., 1])
    assert np.array_equal(result.rgb[..., 0], result.rgb[..., 2])
    # sRGB grey -> L -> sRGB grey is the identity up to float rounding (well under a grey level).
    assert np.abs(result.rgb[..., 0] - grey / 255.0).max() < 1e-3
    assert np.array_equal(result.restored_luminance, result.input_luminance)


def test_colour_input_keeps_its_luminance_and_loses_its_chroma() -> None:
    colour = _scene(24, 40, colour=True, seed=3)
    result = NullRestorer(working_size=16).restore(colour, reference=_scene(20, 20, colour=True, seed=4),
                                                   reference_id="ref-1")
    expected_l = luminance_of(colour.astype(np.float32) / 255.0)
    assert np.abs(result.input_luminance - expected_l).max() < 1e-5
    lab = rgb_to_lab_np(result.rgb)
    assert np.abs(lab[..., 0] / 100.0 - expected_l).max() < 2e-3
    assert np.abs(lab[..., 1:]).max() < 0.05  # chroma zero, up to the Lab round trip
    # The working-size chroma the metrics read is zero and has the real model's working shape.
    assert result.ab_working.shape == (*working_shape(24, 40, 16), 2)
    assert not result.ab_working.any()
    assert result.reference_used is False and result.reference_confidence is None
    assert result.provenance["model"] == "null" and result.provenance["reference_id"] is None
    assert set(result.timings) >= {"decode", "restore", "colorize", "compose", "total"}


def test_encoded_bytes_are_decoded_like_the_real_model_does() -> None:
    out = io.BytesIO()
    Image.fromarray(_scene(16, 12, colour=False)).save(out, "PNG")
    result = NullRestorer().restore(out.getvalue())
    assert result.size == (12, 16)


def test_identity_is_recorded_for_provenance() -> None:
    restorer = NullRestorer()
    assert restorer.model_name == "null"
    assert restorer.checkpoint_sha256 == NULL_CHECKPOINT_SHA256 == "0" * 64
    assert str(restorer.device) == "cpu"
    with pytest.raises(ValueError):
        NullRestorer(working_size=0)


def test_numpy_colour_maths_match_the_model_colour_space() -> None:
    rng = np.random.default_rng(5)
    rgb = rng.random((9, 11, 3), dtype=np.float32)
    rgb[0, :3] = [[0, 0, 0], [1, 1, 1], [0.01, 0.02, 0.005]]  # black, white, the linear segments
    assert np.abs(luminance(rgb) - luminance_of(rgb)).max() < 1e-5


def test_grey_rgb_inverts_luminance_in_strips_on_wide_images() -> None:
    lum01 = np.linspace(0, 1, 3 * 2100, dtype=np.float32).reshape(3, 2100)  # > 1 MP per strip: 3 strips
    rgb = grey_rgb(lum01)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.abs(luminance(rgb) - lum01).max() < 1e-5
    assert np.abs(rgb_to_lab_np(rgb)[..., 0] / 100.0 - lum01).max() < 1e-4


def test_checkpoint_value_selects_the_null_model() -> None:
    assert is_null_checkpoint("null") and is_null_checkpoint(" NULL ")
    assert not is_null_checkpoint(None) and not is_null_checkpoint("/models/null.pt")
    runtime = WorkerRuntime(Settings(checkpoint="null", working_size=32), hostname="bench")
    assert isinstance(runtime.restorer, NullRestorer)
    assert runtime.restorer.working_size == 32


@pytest.fixture
def _embedded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("PIKFIX_BROKER_URL", "PIKFIX_DATABASE_URL", "PIKFIX_STORAGE_URL", "PIKFIX_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIKFIX_WORKING_SIZE", "32")
    yield
    set_runtime(None)


def test_the_job_pipeline_runs_with_the_null_model(tmp_path: Path, _embedded: None) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_scene(48, 64, colour=False)).save(photos / "a.png")
    Image.fromarray(_scene(40, 30, colour=True, seed=2)).save(photos / "b.jpg", quality=95)
    data_dir, out = tmp_path / "data", tmp_path / "out"
    torch.manual_seed(0)
    code = main(["restore", str(photos), "--checkpoint", "null", "--data-dir", str(data_dir), "--out", str(out)])
    url = f"sqlite:///{(data_dir / 'pikfix.db').resolve()}"
    try:
        assert code == 0
        with session_scope(url, readonly=True) as s:
            jobs = s.query(Job).all()
            rows = [(j.input_name, j.status, j.model_name, j.checkpoint_sha256, j.width, j.height) for j in jobs]
        assert sorted(rows) == [
            ("a.png", "succeeded", "null", "0" * 64, 64, 48),
            ("b.jpg", "succeeded", "null", "0" * 64, 30, 40),
        ]
        restored = np.asarray(Image.open(out / "a.restored.png").convert("L"), dtype=np.int16)
        assert np.abs(restored - _scene(48, 64, colour=False)).max() <= 1
    finally:
        dispose_engine(url)
