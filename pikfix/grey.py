"""Luminance and exactly-grey sRGB in plain numpy, for outputs that carry no colour.

A restoration without colour must come out with R = G = B in every pixel, so that any colour
converter reads a* = b* = 0; a Lab -> sRGB matrix with zero chroma gets close but not exact. Both
functions work in strips of about a megapixel, so memory stays bounded at any size, and use
``pikfix.color``'s constants, so they agree with the model's colour space.
"""

from __future__ import annotations

import numpy as np

from pikfix.color import _LAB_F0, _LAB_SLOPE, _LAB_T0, _XYZ_FROM_RGB, L_SCALE, linear_to_srgb, srgb_to_linear

_STRIP_PIXELS = 1 << 20


def _strip_rows(width: int) -> int:
    return max(1, _STRIP_PIXELS // max(1, width))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """CIE L/100 of (H, W, 3) sRGB in [0, 1] as (H, W) float32.

    The same quantity as ``pikfix.inference.luminance_of`` (to float32 rounding), in plain numpy:
    the null model must cost next to nothing, and torch's thread pool makes small images slow."""
    height, width = rgb.shape[:2]
    out = np.empty((height, width), dtype=np.float32)
    y_weights = np.asarray(_XYZ_FROM_RGB[1], dtype=np.float32)  # the Y row; the D65 white has Y = 1
    rows = _strip_rows(width)
    for y in range(0, height, rows):
        linear = srgb_to_linear(np.clip(np.asarray(rgb[y : y + rows], dtype=np.float32), 0.0, 1.0))
        lum_y = linear @ y_weights
        f = np.where(lum_y > _LAB_T0, np.cbrt(np.maximum(lum_y, _LAB_T0)), _LAB_SLOPE * lum_y + _LAB_F0)
        out[y : y + rows] = (116.0 * f - 16.0) / L_SCALE
    return out


def grey_rgb(lum01: np.ndarray) -> np.ndarray:
    """(H, W) CIE L/100 -> (H, W, 3) float32 sRGB with zero chroma: the three channels are identical."""
    height, width = lum01.shape
    rgb = np.empty((height, width, 3), dtype=np.float32)
    f0 = _LAB_F0 + _LAB_SLOPE * _LAB_T0  # f where the cube root meets the linear segment
    rows = _strip_rows(width)
    for y in range(0, height, rows):
        fy = (np.clip(lum01[y : y + rows], 0.0, 1.0) * L_SCALE + 16.0) / 116.0
        lum_y = np.where(fy > f0, np.maximum(fy, f0) ** 3, (fy - _LAB_F0) / _LAB_SLOPE)
        rgb[y : y + rows] = linear_to_srgb(lum_y)[..., None]
    return rgb


__all__ = ["grey_rgb", "luminance"]
