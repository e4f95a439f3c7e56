"""Classical colour transfer (Reinhard, Adhikhmin, Gooch and Shirley 2001): the evaluation baseline.

Reinhard et al. match the mean and standard deviation of each channel of a decorrelated colour space
(their l-alpha-beta) between a source and a reference. We work in CIE Lab (D65), as most
implementations do: it is decorrelated enough for the purpose and is the model's own colour space
(``pikfix.color``), so the baseline and the model are compared in the same terms.

Each channel c: out_c = (src_c - mean_src_c) * std_ref_c / std_src_c + mean_ref_c. A channel without
variation in the source (the chroma of a grey photo) cannot be scaled, only shifted: it takes the
reference's mean. Applied to a grey input, Reinhard therefore gives the photo the reference's average
tint; that is what the classical method can do without the correspondences Pik-Fix learns.
"""

from __future__ import annotations

import numpy as np

from pikfix.color import AB_SCALE, L_SCALE, lab_to_rgb_np, rgb_to_lab_np

_FLAT = 1e-4  # standard deviations below this (in Lab units) count as a channel without variation
_STATS_PIXELS = 1 << 20  # statistics from at most about a megapixel (a regular subsample)


def _subsample(image: np.ndarray) -> np.ndarray:
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / _STATS_PIXELS)))
    return image[::step, ::step]


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) sRGB image, got shape {rgb.shape}")
    return np.clip(rgb, 0.0, 1.0)


def _statistics(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = _subsample(lab).reshape(-1, 3).astype(np.float64)
    return flat.mean(axis=0), flat.std(axis=0)


def lab_statistics(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of an (H, W, 3) sRGB image in Lab, each of shape (3,)."""
    return _statistics(rgb_to_lab_np(_subsample(_check_rgb(rgb))))


def transfer_lab(source_lab: np.ndarray, reference_lab: np.ndarray) -> np.ndarray:
    """Reinhard's statistics matching on (H, W, 3) Lab arrays: each channel gets the reference's mean
    and standard deviation (a flat source channel is only shifted to the reference's mean)."""
    src_mean, src_std = _statistics(source_lab)
    ref_mean, ref_std = _statistics(reference_lab)
    out = np.empty(source_lab.shape, dtype=np.float32)
    for c in range(3):
        gain = ref_std[c] / src_std[c] if src_std[c] > _FLAT else 1.0
        out[..., c] = (source_lab[..., c] - src_mean[c]) * gain + ref_mean[c]
    return out


def reinhard_transfer(source_rgb: np.ndarray, reference_rgb: np.ndarray) -> np.ndarray:
    """Classical Reinhard transfer of all three Lab channels; (H, W, 3) sRGB in [0, 1] out.

    Colours the matching pushes outside the sRGB gamut are clipped on the way back to RGB, so the
    output's statistics match the reference's exactly only where the result stays in gamut.
    """
    source = rgb_to_lab_np(_check_rgb(source_rgb))
    reference = rgb_to_lab_np(_subsample(_check_rgb(reference_rgb)))
    return lab_to_rgb_np(transfer_lab(source, reference))


def reinhard_colorize(luminance01: np.ndarray, reference_rgb: np.ndarray) -> np.ndarray:
    """Colour a grey photo from a reference, keeping its luminance (the evaluation baseline).

    ``luminance01`` is CIE L/100 (H, W). Only the chroma is transferred; luminance is left as it is, so
    that against the model (which brings its own restored luminance) the baseline is judged on colour
    with the input's tones. A grey input's chroma has no variation, so the result is the input tinted
    with the reference's mean a and b.
    """
    lum = np.asarray(luminance01, dtype=np.float32)
    if lum.ndim != 2:
        raise ValueError(f"expected an (H, W) luminance image, got shape {lum.shape}")
    mean_r, _ = lab_statistics(reference_rgb)
    lab = np.empty((*lum.shape, 3), dtype=np.float32)
    lab[..., 0] = np.clip(lum, 0.0, 1.0) * L_SCALE
    lab[..., 1] = np.clip(mean_r[1], -AB_SCALE, AB_SCALE)
    lab[..., 2] = np.clip(mean_r[2], -AB_SCALE, AB_SCALE)
    return lab_to_rgb_np(lab)
