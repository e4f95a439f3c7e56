"""Colour conversions agree with scikit-image and stay differentiable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from pikfix.color import (
    lab_to_rgb,
    lab_to_rgb_np,
    linear_to_srgb,
    model_space_to_rgb,
    rgb_to_gray01,
    rgb_to_lab,
    rgb_to_lab_np,
    rgb_to_model_space,
    srgb_to_linear,
)


@pytest.fixture(scope="module")
def random_rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    rgb = rng.random((32, 32, 3))
    rgb[0, :8] = [
        [0, 0, 0],
        [1, 1, 1],
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [0.5, 0.5, 0.5],
        [0.01, 0.02, 0.0],
        [1, 1, 0],
    ]
    return rgb


def _nchw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float().permute(2, 0, 1).unsqueeze(0)


def test_rgb_to_lab_matches_skimage(random_rgb: np.ndarray) -> None:
    ours = rgb_to_lab(_nchw(random_rgb))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, skcolor.rgb2lab(random_rgb), atol=1e-3, rtol=0)


def test_lab_to_rgb_matches_skimage(random_rgb: np.ndarray) -> None:
    lab = skcolor.rgb2lab(random_rgb)
    ours = lab_to_rgb(_nchw(lab))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, skcolor.lab2rgb(lab), atol=1e-3, rtol=0)
    # and back: Lab values survive the round trip within 1e-3 in L, a and b
    np.testing.assert_allclose(skcolor.rgb2lab(ours.astype(np.float64)), lab, atol=1e-3, rtol=0)


def test_out_of_gamut_lab_is_clamped_like_skimage() -> None:
    rng = np.random.default_rng(1)
    lab = np.stack(
        [rng.uniform(0, 100, (16, 16)), rng.uniform(-110, 110, (16, 16)), rng.uniform(-110, 110, (16, 16))],
        -1,
    )
    ours = lab_to_rgb_np(lab)
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    with pytest.warns(UserWarning, match="negative Z"):  # scikit-image reports the clipping it does
        expected = skcolor.lab2rgb(lab)
    np.testing.assert_allclose(ours, expected, atol=1e-3, rtol=0)


def test_numpy_wrappers_round_trip(random_rgb: np.ndarray) -> None:
    np.testing.assert_allclose(lab_to_rgb_np(rgb_to_lab_np(random_rgb)), random_rgb, atol=1e-4)


def test_model_space_ranges_and_round_trip(random_rgb: np.ndarray) -> None:
    rgb = _nchw(random_rgb)
    l01, ab = rgb_to_model_space(rgb)
    assert l01.shape == (1, 1, 32, 32) and ab.shape == (1, 2, 32, 32)
    assert l01.min() >= 0.0 and l01.max() <= 1.0 + 1e-6
    assert ab.abs().max() <= 1.0
    torch.testing.assert_close(model_space_to_rgb(l01, ab), rgb, atol=1e-4, rtol=0)
    torch.testing.assert_close(rgb_to_gray01(rgb), l01)


def test_grey_has_zero_chroma() -> None:
    grey = torch.linspace(0, 1, 11).view(1, 1, 1, 11).expand(1, 3, 1, 11)
    _, ab = rgb_to_model_space(grey)
    assert ab.abs().max() < 1e-3


def test_gradients_are_finite_everywhere() -> None:
    rgb = torch.cat([torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.rand(1, 3, 2, 2)], dim=-1)
    rgb.requires_grad_(True)
    l01, ab = rgb_to_model_space(rgb)
    (l01.sum() + ab.sum() + model_space_to_rgb(l01, ab).sum()).backward()
    assert torch.isfinite(rgb.grad).all()
    assert rgb.grad.abs().sum() > 0


def test_half_input_is_computed_in_float32() -> None:
    rgb = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(rgb_to_lab(rgb.half()), rgb_to_lab(rgb.half().float()))


def test_srgb_transfer_function_serves_numpy_and_torch_alike() -> None:
    encoded = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    linear = srgb_to_linear(encoded)
    assert isinstance(linear, np.ndarray) and linear.dtype == np.float32
    torch.testing.assert_close(srgb_to_linear(torch.from_numpy(encoded)), torch.from_numpy(linear))
    np.testing.assert_allclose(linear_to_srgb(linear), encoded, atol=1e-6)
    np.testing.assert_allclose(linear[[0, 1000]], (0.0, 1.0), atol=1e-7)
    np.testing.assert_allclose(linear_to_srgb(np.array([-0.5, 2.0])), (0.0, 1.0))  # clamped first
