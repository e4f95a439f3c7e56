"""Quality metrics for restored and colourized photos.

Full-reference metrics (PSNR, SSIM, and LPIPS when the user supplies its weights) need a ground truth
and are used for evaluation. No-reference metrics are computed for every job so that weak results
(dull or sepia colours, impossible colours, blur, noise) can be flagged for a human instead of being
shipped silently.

All functions take float images in [0, 1] and stay bounded in memory on archive scans: full-reference
metrics and the neighbourhood statistics work on row strips; per-pixel statistics
(colourfulness, out-of-gamut rate) and the neighbourhood ones (sharpness, noise) are evaluated on a
regular subset of at most ``MAX_SAMPLE_PIXELS`` pixels when the image is larger (about 4 MP). Both are
unbiased estimates of the full-image value; small images are always measured exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_SAMPLE_PIXELS = 4_000_000
STRIP_ROWS = 256  # rows per strip in the strip-wise computations

# CIE Lab (D65) -> linear sRGB: the inverse of scikit-image's xyz_from_rgb, so the colour module agrees.
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB).astype(np.float32)
WHITE_D65 = (0.95047, 1.0, 1.08883)
AB_SCALE = 110.0  # model space: ab / 110 in about [-1, 1]
GAMUT_EPS = 2e-3  # linear-RGB slack before a pixel counts as out of gamut (rounding, not colour)


# ----------------------------------------------------------------------------- helpers


def _as_float(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a float image in [0, 1], got dtype {x.dtype}")
    return x


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def _strips(rows: int, height: int = STRIP_ROWS, overlap: int = 0) -> Iterator[tuple[int, int]]:
    """Row ranges covering ``rows``; consecutive ranges share ``overlap`` rows (filter support)."""
    step = max(1, height - overlap)
    start = 0
    while True:
        stop = min(rows, start + height)
        yield start, stop
        if stop >= rows:
            return
        start += step


def _sample_rows(h: int, w: int, support: int) -> list[tuple[int, int]]:
    """Row bands to measure: all rows for small images, evenly spaced bands totalling about
    ``MAX_SAMPLE_PIXELS`` for big ones. Each band is ``support`` rows taller than it reports so a
    local filter has its neighbours."""
    if h * w <= MAX_SAMPLE_PIXELS:
        return [(0, h)]
    band = 64 + support
    n_bands = max(1, MAX_SAMPLE_PIXELS // (64 * w))
    starts = np.linspace(0, h - band, n_bands).astype(int)
    return [(int(s), int(s) + band) for s in np.unique(starts)]


def _pixel_stride(h: int, w: int) -> int:
    """Pixel stride (both axes) that keeps at most ``MAX_SAMPLE_PIXELS`` samples."""
    return max(1, math.ceil(math.sqrt(h * w / MAX_SAMPLE_PIXELS)))


# ----------------------------------------------------------------------------- full reference


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images); exact, computed strip by strip."""
    a, b = _as_float(a, "a"), _as_float(b, "b")
    _check_same_shape(a, b)
    total = 0.0
    for y0, y1 in _strips(a.shape[0]):
        diff = a[y0:y1].astype(np.float64) - b[y0:y1]
        total += float(np.vdot(diff.ravel(), diff.ravel()))
    mse = total / a.size
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5: an 11x11 window, as scikit-image uses


def _ssim_kernel() -> np.ndarray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return k / k.sum()


def _valid_filter(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable filter with no padding: output shrinks by len(k) - 1 on both axes."""
    n = len(k)
    rows = x.shape[0] - n + 1
    tmp = k[0] * x[:rows]
    for i in range(1, n):
        tmp += k[i] * x[i : i + rows]
    cols = x.shape[1] - n + 1
    out = k[0] * tmp[:, :cols]
    for i in range(1, n):
        out += k[i] * tmp[:, i : i + cols]
    return out


def _ssim_sum(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[float, int]:
    """Sum and count of the SSIM map over the window-valid region of one channel, strip by strip.

    scikit-image filters with mirrored borders and then drops a radius-wide border, so the values it
    averages never touch the padding: a valid (unpadded) filter gives exactly the same numbers.
    """
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    k = _ssim_kernel()
    total, count = 0.0, 0
    for y0, y1 in _strips(a.shape[0], STRIP_ROWS + 2 * SSIM_RADIUS, overlap=2 * SSIM_RADIUS):
        if y1 - y0 <= 2 * SSIM_RADIUS:
            continue
        x = a[y0:y1].astype(np.float64)
        y = b[y0:y1].astype(np.float64)
        ux, uy = _valid_filter(x, k), _valid_filter(y, k)
        vx = _valid_filter(x * x, k) - ux * ux
        vy = _valid_filter(y * y, k) - uy * uy
        vxy = _valid_filter(x * y, k) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        total += float(s.sum())
        count += s.size
    return total, count


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004) with an 11x11 Gaussian window of sigma 1.5.

    Matches ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``; colour (HxWx3) is the mean over channels.
    Works strip by strip in float64, so memory stays bounded for any image size.
    """
    a, b = _as_float(a, "a"), _as_float(b, "b")
    _check_same_shape(a, b)
    if a.ndim not in (2, 3):
        raise ValueError(f"ssim expects HxW or HxWxC images, got shape {a.shape}")
    if min(a.shape[:2]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"ssim needs images of at least {2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1} pixels")
    channels = [(a, b)] if a.ndim == 2 else [(a[..., c], b[..., c]) for c in range(a.shape[2])]
    values = []
    for x, y in channels:
        total, count = _ssim_sum(x, y, data_range)
        values.append(total / count)
    return float(np.mean(values))


class LPIPSWeightsError(ValueError):
    """The LPIPS weights file is missing a part or does not fit the VGG16 LPIPS network."""


def _vgg_features(state: dict) -> dict:
    """The ``features.*`` tensors of a torchvision VGG state_dict, keys relative to ``features``."""
    return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}


class LPIPS:
    """LPIPS (Zhang et al. 2018, VGG16 variant), only from user-supplied weights.

    LPIPS is a learned metric: without its trained linear layers and the ImageNet VGG16 it is not
    LPIPS, so there is no fallback — callers simply omit the metric when no weights are configured.
    ``from_file`` takes the official linear-layer file (``vgg.pth``: keys ``lin{i}.model.1.weight``)
    and torchvision's ``vgg16`` ImageNet state_dict, either in the same file or via ``backbone``.
    """

    # LPIPS taps VGG16 after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
    TAPS = (3, 8, 15, 22, 29)
    CHANNELS = (64, 128, 256, 512, 512)
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, linear: list[torch.Tensor], features: torch.nn.Module, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.features = features.to(self.device).eval()
        self.linear = [w.to(self.device) for w in linear]

    @classmethod
    def from_file(cls, path: str | Path, backbone: str | Path | None = None, device: str = "cpu") -> LPIPS:
        from torchvision.models.vgg import cfgs, make_layers

        from pikfix.backbones import load_state_dict_file

        state = load_state_dict_file(str(path))
        linear = []
        for i, channels in enumerate(cls.CHANNELS):
            w = state.get(f"lin{i}.model.1.weight", state.get(f"lin{i}.weight"))
            if w is None or tuple(w.shape) != (1, channels, 1, 1):
                raise LPIPSWeightsError(
                    f"{path}: no LPIPS linear layer lin{i} of shape (1, {channels}, 1, 1)"
                )
            linear.append(w.float())
        features = _vgg_features(state)
        if not features and backbone is not None:
            features = _vgg_features(load_state_dict_file(str(backbone)))
        if not features:
            raise LPIPSWeightsError("LPIPS needs torchvision's VGG16 ImageNet weights: pass backbone=")
        net = make_layers(cfgs["D"])[: cls.TAPS[-1] + 1]  # torchvision's vgg16().features, no classifier
        try:
            net.load_state_dict(features)
        except RuntimeError as exc:
            raise LPIPSWeightsError(f"not torchvision VGG16 weights: {exc}") from exc
        for p in net.parameters():
            p.requires_grad_(False)
        return cls(linear, net, device)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS distance between two RGB (or grey) images in [0, 1]; 0 means identical."""
        torch = self._torch
        _check_same_shape(np.asarray(a), np.asarray(b))

        def prepare(x: np.ndarray) -> torch.Tensor:
            t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
            t = t[..., None].expand(*t.shape, 3) if t.ndim == 2 else t
            t = t.permute(2, 0, 1)[None] * 2 - 1  # LPIPS works on [-1, 1]
            shift = t.new_tensor(self.SHIFT).view(1, 3, 1, 1)
            scale = t.new_tensor(self.SCALE).view(1, 3, 1, 1)
            return (t - shift) / scale

        with torch.inference_mode():
            xa, xb = prepare(a), prepare(b)
            total = xa.new_zeros(())
            for index, layer in enumerate(self.features):
                xa, xb = layer(xa), layer(xb)
                if index in self.TAPS:
                    lin = self.linear[self.TAPS.index(index)]
                    na = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                    nb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                    total = total + torch.nn.functional.conv2d((na - nb) ** 2, lin).mean()
        return float(total)


# ----------------------------------------------------------------------------- no reference


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness M3 = σ_rgyb + 0.3 μ_rgyb on the 0-255 scale.

    The 0-255 scale keeps the paper's reading of the number: about 0 grey, 15 slightly, 33
    moderately, 45 averagely, 59 quite, 82 highly, 109 extremely colourful.
    """
    rgb = _as_float(rgb, "rgb")
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"colourfulness expects an HxWx3 image, got shape {rgb.shape}")
    stride = _pixel_stride(*rgb.shape[:2])
    px = rgb[::stride, ::stride, :3].reshape(-1, 3).astype(np.float64) * 255.0
    rg = px[:, 0] - px[:, 1]
    yb = 0.5 * (px[:, 0] + px[:, 1]) - px[:, 2]
    sigma = math.sqrt(float(rg.var()) + float(yb.var()))
    mu = math.sqrt(float(rg.mean()) ** 2 + float(yb.mean()) ** 2)
    return sigma + 0.3 * mu


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """Per-pixel CIEDE2000 colour difference of two (..., 3) CIE Lab arrays (kL = kC = kH = 1).

    Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes":
    the hue angle and its difference follow their conventions, including the zero-chroma cases.
    """
    L1, a1, b1 = (np.asarray(lab1, dtype=np.float64)[..., i] for i in range(3))
    L2, a2, b2 = (np.asarray(lab2, dtype=np.float64)[..., i] for i in range(3))
    c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0) ** 7
    g = 0.5 * (1.0 - np.sqrt(c_mean7 / (c_mean7 + 25.0**7)))
    a1p, a2p = a1 * (1.0 + g), a2 * (1.0 + g)
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360.0
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360.0
    both = (c1p * c2p) != 0.0  # a hue only exists where both colours have chroma

    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(both, dh, 0.0)
    d_l, d_c = L2 - L1, c2p - c1p
    d_h = 2.0 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2.0))

    l_mean, c_mean = (L1 + L2) / 2.0, (c1p + c2p) / 2.0
    h_sum = h1p + h2p
    h_mean = np.where(np.abs(h1p - h2p) > 180.0, np.where(h_sum < 360.0, h_sum + 360.0, h_sum - 360.0), h_sum) / 2.0
    h_mean = np.where(both, h_mean, h_sum)
    t = (1.0 - 0.17 * np.cos(np.radians(h_mean - 30.0)) + 0.24 * np.cos(np.radians(2.0 * h_mean))
         + 0.32 * np.cos(np.radians(3.0 * h_mean + 6.0)) - 0.20 * np.cos(np.radians(4.0 * h_mean - 63.0)))
    s_l = 1.0 + 0.015 * (l_mean - 50.0) ** 2 / np.sqrt(20.0 + (l_mean - 50.0) ** 2)
    s_c = 1.0 + 0.045 * c_mean
    s_h = 1.0 + 0.015 * c_mean * t
    c_mean7p = c_mean**7
    r_t = (-2.0 * np.sqrt(c_mean7p / (c_mean7p + 25.0**7))
           * np.sin(np.radians(60.0 * np.exp(-(((h_mean - 275.0) / 25.0) ** 2)))))
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


def _grey(gray: np.ndarray, name: str) -> np.ndarray:
    gray = _as_float(gray, name)
    if gray.ndim == 3 and gray.shape[2] == 1:
        gray = gray[..., 0]
    if gray.ndim != 2:
        raise ValueError(f"{name} must be an HxW grey image, got shape {gray.shape}")
    if min(gray.shape) < 3:
        raise ValueError(f"{name} is too small ({gray.shape}) for a 3x3 operator")
    return gray


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (Pech-Pacheco et al. 2000): lower means blurrier."""
    gray = _grey(gray, "gray")
    n, s, ss = 0, 0.0, 0.0
    for y0, y1 in _sample_rows(*gray.shape, support=2):
        for r0, r1 in _strips(y1 - y0, STRIP_ROWS + 2, overlap=2):
            g = gray[y0 + r0 : y0 + r1].astype(np.float32)
            if g.shape[0] < 3:
                continue
            lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
            lap = lap.astype(np.float64)
            n += lap.size
            s += float(lap.sum())
            ss += float(np.einsum("ij,ij->", lap, lap))
    mean = s / n
    return max(0.0, ss / n - mean * mean)


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkær (1996) fast noise estimate: σ of additive white noise, in the image's [0, 1] units.

    σ = sqrt(π/2) / (6 (W-2)(H-2)) Σ |I * N| with N = [[1,-2,1],[-2,4,-2],[1,-2,1]], a mask that
    cancels smooth structure (it is the difference of two Laplacians). Strong texture inflates it.
    """
    gray = _grey(gray, "gray")
    n, total = 0, 0.0
    for y0, y1 in _sample_rows(*gray.shape, support=2):
        for r0, r1 in _strips(y1 - y0, STRIP_ROWS + 2, overlap=2):
            g = gray[y0 + r0 : y0 + r1].astype(np.float32)
            if g.shape[0] < 3:
                continue
            # N is separable: [1, -2, 1]^T [1, -2, 1]
            v = g[:-2] - 2.0 * g[1:-1] + g[2:]
            r = v[:, :-2] - 2.0 * v[:, 1:-1] + v[:, 2:]
            n += r.size
            total += float(np.abs(r).sum(dtype=np.float64))
    return math.sqrt(math.pi / 2.0) * total / (6.0 * n)


def luminance_change(before: np.ndarray, after: np.ndarray) -> float:
    """Mean absolute difference between two grey images in [0, 1] (how much restoration altered)."""
    before, after = _grey(before, "before"), _grey(after, "after")
    _check_same_shape(before, after)
    total = 0.0
    for y0, y1 in _strips(before.shape[0]):
        total += float(np.abs(before[y0:y1].astype(np.float64) - after[y0:y1]).sum())
    return total / before.size


def _lab_channels(ab: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ab = _as_float(ab, "ab")
    if ab.ndim == 3 and ab.shape[-1] == 2 and ab.shape[:2] == shape:
        return ab[..., 0], ab[..., 1]
    if ab.ndim == 3 and ab.shape[0] == 2 and ab.shape[1:] == shape:
        return ab[0], ab[1]
    raise ValueError(f"ab must be HxWx2 or 2xHxW matching L {shape}, got shape {ab.shape}")


def lab_to_linear_rgb(L: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE Lab (L in 0..100, a/b unscaled, D65) to linear sRGB, (..., 3) float32, unclipped."""

    def finv(t: np.ndarray) -> np.ndarray:
        # inverse of Lab's f: cube above 6/29, the linear segment below
        return np.where(t > 6.0 / 29.0, t * t * t, 3.0 * (6.0 / 29.0) ** 2 * (t - 4.0 / 29.0))

    fy = (L.astype(np.float32) + 16.0) / 116.0
    xyz = np.stack(
        [WHITE_D65[0] * finv(fy + a / 500.0), WHITE_D65[1] * finv(fy), WHITE_D65[2] * finv(fy - b / 200.0)],
        axis=-1,
    ).astype(np.float32)
    return xyz @ RGB_FROM_XYZ.T


def out_of_gamut_rate(
    L01: np.ndarray, ab: np.ndarray, ab_scale: float = AB_SCALE, eps: float = GAMUT_EPS
) -> float:
    """Fraction of pixels whose Lab colour has no sRGB equivalent (linear RGB outside [0, 1] by > eps).

    ``L01`` is L/100 and ``ab`` the model's ab/``ab_scale`` (HxWx2 or 2xHxW). The network can predict
    chroma no display can show; the encoder then clips it into blotches, so a high rate flags a result.
    """
    L01 = _grey(L01, "L01")
    a, b = _lab_channels(ab, L01.shape)
    stride = _pixel_stride(*L01.shape)
    L = L01[::stride, ::stride] * 100.0
    rgb = lab_to_linear_rgb(L, a[::stride, ::stride] * ab_scale, b[::stride, ::stride] * ab_scale)
    outside = ((rgb < -eps) | (rgb > 1.0 + eps)).any(axis=-1)
    return float(outside.mean())


def no_reference_metrics(
    rgb: np.ndarray,
    input_gray: np.ndarray,
    restored_gray: np.ndarray,
    L01: np.ndarray,
    ab: np.ndarray,
    reference_score: float | None = None,
) -> dict[str, float]:
    """The per-job metrics that need no ground truth.

    ``rgb``: the delivered colour photo; ``input_gray``/``restored_gray``: luminance before and after
    restoration (same size); ``L01``/``ab``: the Lab prediction in model space. The input's sharpness
    and noise are reported beside the output's so a reviewer sees what restoration changed.
    """
    metrics = {
        "colourfulness": colourfulness(rgb),
        "sharpness": sharpness(restored_gray),
        "sharpness_input": sharpness(input_gray),
        "noise_sigma": noise_sigma(restored_gray),
        "noise_sigma_input": noise_sigma(input_gray),
        "luminance_change": luminance_change(input_gray, restored_gray),
        "out_of_gamut_rate": out_of_gamut_rate(L01, ab),
    }
    if reference_score is not None:
        metrics["reference_score"] = float(reference_score)
    return metrics
