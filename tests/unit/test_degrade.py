"""Synthetic old-photo degradation: deterministic, grey, in range, damage confined to its mask."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pikfix.degrade import DegradeConfig, degrade, degrade_pil, gaussian_blur


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 96x112 colour test image with edges, gradients and saturated colour."""
    y, x = np.mgrid[0:96, 0:112].astype(np.float32)
    rgb = np.stack([x / 111, y / 95, 0.5 + 0.5 * np.sin(x / 7) * np.cos(y / 9)], axis=-1)
    rgb[30:60, 40:80] = (0.9, 0.1, 0.2)
    return rgb.astype(np.float32)


def test_same_seed_is_identical(photo: np.ndarray) -> None:
    a, b = degrade(photo, seed=11), degrade(photo, seed=11)
    np.testing.assert_array_equal(a.gray, b.gray)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.params == b.params


def test_different_seeds_differ(photo: np.ndarray) -> None:
    outputs = [degrade(photo, seed=s) for s in range(4)]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not np.array_equal(outputs[i].gray, outputs[j].gray)
            assert not np.array_equal(outputs[i].mask, outputs[j].mask)


@pytest.mark.parametrize("seed", range(6))
def test_output_is_grey_float_in_range_with_damage(photo: np.ndarray, seed: int) -> None:
    d = degrade(photo, seed=seed, severity=1.0)
    assert d.gray.shape == photo.shape[:2] and d.gray.dtype == np.float32
    assert d.mask.shape == photo.shape[:2] and d.mask.dtype == bool
    assert d.gray.min() >= 0.0 and d.gray.max() <= 1.0
    assert d.mask.any(), "severity 1 always draws at least one defect"
    json.dumps(d.params)  # params are stored with training samples: plain JSON types only


@pytest.mark.parametrize("seed", range(8))
def test_damage_stays_inside_mask(photo: np.ndarray, seed: int) -> None:
    """Switching damage off changes nothing else (independent per-step generators), so the
    difference between the two outputs is the damage itself; without JPEG it is exactly local."""
    base = DegradeConfig(jpeg=False, p_polygons=1.0)
    damaged = degrade(photo, seed, config=base)
    clean = degrade(photo, seed, config=replace(base, defects=False, polygons=False))
    changed = np.abs(damaged.gray - clean.gray) > 1e-6
    assert changed.any()
    assert not (changed & ~damaged.mask).any()
    assert (damaged.gray[damaged.mask] != clean.gray[damaged.mask]).mean() > 0.5


def test_white_polygons_respect_paper_limits() -> None:
    """Polygons are pure white, avoid the central 60 % box and each covers under 1/20 of the image."""
    rgb = np.full((120, 160, 3), 0.3, dtype=np.float32)
    cfg = DegradeConfig(tone=False, fade=False, resample=False, blur=False, noise=False, defects=False,
                        jpeg=False, p_polygons=1.0)  # fmt: skip
    seen = 0
    for seed in range(12):
        d = degrade(rgb, seed, config=cfg)
        white = d.gray == 1.0
        np.testing.assert_array_equal(white, d.mask)
        assert not white[24:96, 32:128].any()
        assert white.sum() < 2 * 120 * 160 / 20  # at most two polygons, each under 1/20
        seen += white.any()
    assert seen >= 10


def test_severity_zero_is_plain_grey(photo: np.ndarray) -> None:
    d = degrade(photo, seed=3, severity=0.0)
    expected = photo @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(d.gray, expected, atol=1e-6)
    assert not d.mask.any()


def test_higher_severity_degrades_more(photo: np.ndarray) -> None:
    clean = photo @ np.array([0.299, 0.587, 0.114], dtype=np.float32)

    def error(severity: float) -> float:
        return float(np.mean([np.abs(degrade(photo, s, severity).gray - clean).mean() for s in range(6)]))

    assert error(0.3) < error(1.0) < error(1.8)


def test_rejects_bad_input(photo: np.ndarray) -> None:
    with pytest.raises(ValueError):
        degrade(photo[..., 0], seed=0)
    with pytest.raises(ValueError):
        degrade(photo, seed=0, severity=-1.0)


def test_degrade_pil_gives_8bit_grey(photo: np.ndarray) -> None:
    img = Image.fromarray((photo * 255).astype(np.uint8))
    out = degrade_pil(img, seed=5)
    assert out.mode == "L" and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out), np.asarray(degrade_pil(img, seed=5)))


def test_gaussian_blur_preserves_mean_and_smooths() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 50), dtype=np.float32)
    y = gaussian_blur(x, 1.5)
    assert y.shape == x.shape
    assert abs(float(y.mean()) - float(x.mean())) < 0.01
    assert y.std() < 0.5 * x.std()
