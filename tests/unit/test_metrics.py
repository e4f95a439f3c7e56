"""Quality metrics against scikit-image and against known properties of each estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import color
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pikfix import metrics
from pikfix.color import srgb_to_linear
from pikfix.degrade import gaussian_blur
from pikfix.metrics import (
    LPIPS,
    LPIPSWeightsError,
    colourfulness,
    luminance_change,
    no_reference_metrics,
    noise_sigma,
    out_of_gamut_rate,
    psnr,
    sharpness,
    ssim,
)

RNG = np.random.default_rng(1234)


def structured(h: int = 90, w: int = 110) -> np.ndarray:
    """A smooth image with edges: gradients, a sinusoid and a bright block."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.3 + 0.2 * np.sin(x / 6.0) * np.cos(y / 11.0) + 0.2 * x / w
    img[20:50, 30:70] += 0.25
    return np.clip(img, 0.0, 1.0)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
        channel_axis=-1 if a.ndim == 3 else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "pair",
    [
        lambda: (RNG.random((64, 80)), RNG.random((64, 80))),
        lambda: (structured(), np.clip(structured() + 0.05 * RNG.standard_normal((90, 110)), 0, 1)),
        lambda: (structured(), 0.8 * structured() + 0.1),
        lambda: (structured(300, 40), np.roll(structured(300, 40), 2, axis=0)),  # several row strips
        lambda: (RNG.random((40, 50, 3)), np.clip(RNG.random((40, 50, 3)) * 0.3 + 0.2, 0, 1)),
    ],
)
def test_psnr_and_ssim_match_scikit_image(pair) -> None:
    a, b = pair()
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-9)
    assert abs(ssim(a, b) - skimage_ssim(a, b)) < 1e-4
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert abs(ssim(a32, b32) - skimage_ssim(a32, b32)) < 1e-4


def test_ssim_strips_give_the_same_answer_as_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    a = structured(120, 70)
    b = np.clip(a + 0.03 * RNG.standard_normal(a.shape), 0, 1)
    whole = ssim(a, b)
    monkeypatch.setattr(metrics, "STRIP_ROWS", 17)
    assert ssim(a, b) == pytest.approx(whole, abs=1e-12)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-9)


def test_identical_images() -> None:
    a = structured()
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0)


def test_full_reference_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        ssim(structured(), structured(91, 110))
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))  # smaller than the 11x11 window


def test_colourfulness_grey_is_zero_and_saturated_is_higher() -> None:
    grey = np.repeat(structured()[..., None], 3, axis=-1)
    assert colourfulness(grey) == pytest.approx(0.0, abs=1e-9)
    muted = np.clip(grey + np.array([0.05, 0.0, -0.05]), 0, 1)
    saturated = np.zeros((40, 40, 3))
    saturated[:20, :, 0] = 1.0
    saturated[20:, :, 2] = 1.0
    assert 0 < colourfulness(muted) < colourfulness(saturated)
    assert colourfulness(saturated) > 100  # "extremely colourful" on the Hasler-Süsstrunk scale


def test_noise_estimate_tracks_added_sigma() -> None:
    clean = structured(160, 160)
    for sigma in (0.01, 0.03, 0.08):
        noisy = clean + sigma * RNG.standard_normal(clean.shape)  # unclipped: clipping would bias
        assert noise_sigma(noisy) == pytest.approx(sigma, rel=0.2)
    assert noise_sigma(clean) < 0.005


def test_sharpness_drops_after_blur() -> None:
    img = structured(120, 120) + 0.02 * RNG.standard_normal((120, 120))
    blurred = gaussian_blur(img.astype(np.float32), 1.5)
    assert sharpness(blurred) < 0.5 * sharpness(img)
    assert sharpness(np.full((20, 20), 0.4)) == pytest.approx(0.0, abs=1e-12)


def test_luminance_change() -> None:
    a = structured()
    assert luminance_change(a, a) == 0.0
    assert luminance_change(a, a + 0.1) == pytest.approx(0.1, abs=1e-6)


def test_out_of_gamut_rate() -> None:
    L01 = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    assert out_of_gamut_rate(L01, np.zeros((64, 64, 2), np.float32)) == 0.0
    extreme = np.ones((64, 64, 2), np.float32)  # a = b = 110
    assert out_of_gamut_rate(L01, extreme) > 0.9
    assert out_of_gamut_rate(L01, np.moveaxis(extreme, -1, 0)) == out_of_gamut_rate(L01, extreme)
    # colours that came from real sRGB pixels are in gamut
    rgb = RNG.random((40, 40, 3))
    lab = color.rgb2lab(rgb)
    assert (
        out_of_gamut_rate((lab[..., 0] / 100).astype(np.float32), (lab[..., 1:] / 110).astype(np.float32))
        == 0.0
    )


def test_lab_to_linear_rgb_inverts_scikit_image() -> None:
    rgb = RNG.random((30, 30, 3))
    lab = color.rgb2lab(rgb)
    np.testing.assert_allclose(
        metrics.lab_to_linear_rgb(lab[..., 0], lab[..., 1], lab[..., 2]), srgb_to_linear(rgb), atol=1e-4
    )


def test_large_images_are_sampled_consistently(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the pixel budget the estimates come from a subset; they stay close to the exact value."""
    img = structured(400, 300) + 0.02 * RNG.standard_normal((400, 300))
    rgb = np.clip(np.stack([img, img * 0.7, 1 - img], axis=-1), 0, 1)
    exact = (sharpness(img), noise_sigma(img), colourfulness(rgb))
    monkeypatch.setattr(metrics, "MAX_SAMPLE_PIXELS", 30_000)
    sampled = (sharpness(img), noise_sigma(img), colourfulness(rgb))
    for e, s in zip(exact, sampled, strict=True):
        assert s == pytest.approx(e, rel=0.1)


def test_no_reference_metrics_collects_everything() -> None:
    gray_in = structured()
    restored = gaussian_blur(gray_in.astype(np.float32), 0.5)
    rgb = np.repeat(restored[..., None], 3, axis=-1)
    ab = np.zeros(gray_in.shape + (2,), np.float32)
    result = no_reference_metrics(rgb, gray_in, restored, restored, ab, reference_score=0.75)
    assert set(result) == {
        "colourfulness", "sharpness", "sharpness_input", "noise_sigma", "noise_sigma_input",
        "luminance_change", "out_of_gamut_rate", "reference_score",
    }  # fmt: skip
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values())
    assert result["colourfulness"] == pytest.approx(0.0, abs=1e-6)
    assert result["sharpness"] < result["sharpness_input"]
    assert "reference_score" not in no_reference_metrics(rgb, gray_in, restored, restored, ab)


def test_lpips_needs_real_weights(tmp_path) -> None:
    """LPIPS is optional: a file without its linear layers or without VGG16 weights is refused."""
    import torch

    with pytest.raises(FileNotFoundError):
        LPIPS.from_file(tmp_path / "missing.pth")
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(LPIPSWeightsError):
        LPIPS.from_file(tmp_path / "bad.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS.CHANNELS)}
    torch.save(lin, tmp_path / "lin.pth")
    with pytest.raises(LPIPSWeightsError, match="VGG16"):
        LPIPS.from_file(tmp_path / "lin.pth")


def test_lpips_loads_official_layout_and_measures_distance(tmp_path) -> None:
    """Wiring check with stand-in tensors in the official key layout (values are not LPIPS's):
    identical images give 0, different ones a positive, symmetric distance."""
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS.CHANNELS)}
    torch.save(lin, tmp_path / "lin.pth")
    torch.save(vgg, tmp_path / "vgg16.pth")
    model = LPIPS.from_file(tmp_path / "lin.pth", backbone=tmp_path / "vgg16.pth")
    a = structured(48, 48)
    b = np.clip(a + 0.1 * RNG.standard_normal(a.shape), 0, 1)
    assert model(a, a) == pytest.approx(0.0, abs=1e-7)
    assert model(a, b) > 0
    assert model(a, b) == pytest.approx(model(b, a), rel=1e-5)
    torch.save({**lin, **vgg}, tmp_path / "both.pth")  # one file holding both parts also works
    assert LPIPS.from_file(tmp_path / "both.pth")(a, b) == pytest.approx(model(a, b), rel=1e-5)
