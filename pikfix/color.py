"""sRGB <-> CIE Lab (D65, 2 degree observer) as differentiable torch code on (N,3,H,W) tensors.

The model works in "model space": luminance L/100 in [0, 1] and chroma ab/110 in about [-1, 1]
(the SPHist bins span [-1, 1]). Constants follow scikit-image so results agree with it to well
under 1e-3 in L, a and b; every power is taken of a clamped base so gradients never turn into NaN.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import numpy as np
import torch

_Array = TypeVar("_Array", np.ndarray, torch.Tensor)

L_SCALE = 100.0
AB_SCALE = 110.0

# Linear sRGB -> XYZ (scikit-image's ``xyz_from_rgb``) and the D65 reference white.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_RGB_FROM_XYZ = tuple(map(tuple, np.linalg.inv(np.array(_XYZ_FROM_RGB)).tolist()))
_WHITE_D65 = (0.95047, 1.0, 1.08883)

_EPS = 1e-8
_LAB_T0 = 0.008856  # (6/29)^3, where the cube root gives way to the linear segment
_LAB_SLOPE = 7.787  # 1 / (3 (6/29)^2)
_LAB_F0 = 16.0 / 116.0


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Colour maths in at least float32: fp16 loses the precision the cube root needs."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _full_precision(fn):
    """Run ``fn`` with autocast off, so a caller's fp16/bf16 autocast cannot lower the matrix maths."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(x, *args)

    return wrapper


def _mix(matrix: tuple[tuple[float, ...], ...], x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix over the channel axis of (N,3,H,W)."""
    m = x.new_tensor(matrix)
    return torch.einsum("ij,njhw->nihw", m, x)


def srgb_to_linear(c: _Array) -> _Array:
    """Decode the sRGB transfer function (IEC 61966-2-1): the package's one copy, for torch tensors
    and numpy arrays alike. The power is taken of a clamped base, so gradients never turn NaN."""
    where = torch.where if isinstance(c, torch.Tensor) else np.where
    return where(c > 0.04045, ((c.clip(min=0.04045) + 0.055) / 1.055) ** 2.4, c / 12.92)


def linear_to_srgb(c: _Array) -> _Array:
    """Linear light, clamped to [0, 1], encoded with the sRGB transfer function (torch or numpy)."""
    c = c.clip(0.0, 1.0)
    where = torch.where if isinstance(c, torch.Tensor) else np.where
    return where(c > 0.0031308, 1.055 * c.clip(min=0.0031308) ** (1.0 / 2.4) - 0.055, c * 12.92)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _LAB_T0, t.clamp_min(_LAB_T0) ** (1.0 / 3.0), _LAB_SLOPE * t + _LAB_F0)


def _lab_f_inv(f: torch.Tensor) -> torch.Tensor:
    f0 = 0.2068966  # f(_LAB_T0)
    return torch.where(f > f0, f.clamp_min(f0) ** 3, (f - _LAB_F0) / _LAB_SLOPE)


@_full_precision
def rgb_to_lab(rgb01: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (N,3,H,W) -> Lab with L in [0, 100] and a, b roughly in [-110, 110]."""
    rgb = _as_float(rgb01).clamp(0.0, 1.0)
    xyz = _mix(_XYZ_FROM_RGB, srgb_to_linear(rgb))
    xyz = xyz / xyz.new_tensor(_WHITE_D65).view(1, 3, 1, 1)
    fx, fy, fz = _lab_f(xyz).unbind(1)
    lum = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack((lum, a, b), dim=1)


@_full_precision
def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab (N,3,H,W) -> sRGB in [0, 1], out-of-gamut colours clamped (as scikit-image does)."""
    lab = _as_float(lab)
    lum, a, b = lab.unbind(1)
    fy = (lum + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp_min(0.0)
    xyz = _lab_f_inv(torch.stack((fx, fy, fz), dim=1)) * lab.new_tensor(_WHITE_D65).view(1, 3, 1, 1)
    return linear_to_srgb(_mix(_RGB_FROM_XYZ, xyz))


def rgb_to_model_space(rgb01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB in [0, 1] -> (L/100 as (N,1,H,W), ab/110 as (N,2,H,W))."""
    lab = rgb_to_lab(rgb01)
    return lab[:, :1] / L_SCALE, lab[:, 1:] / AB_SCALE


def model_space_to_rgb(l01: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """(L/100, ab/110) -> sRGB in [0, 1]; L is clamped to [0, 1] first."""
    lum = _as_float(l01).clamp(0.0, 1.0) * L_SCALE
    return lab_to_rgb(torch.cat((lum, _as_float(ab) * AB_SCALE), dim=1))


def rgb_to_gray01(rgb01: torch.Tensor) -> torch.Tensor:
    """The model's notion of grey: CIE L/100 of an sRGB image, (N,1,H,W)."""
    return rgb_to_model_space(rgb01)[0]


def _np_to_nchw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)


def _nchw_to_np(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).cpu().numpy()


def rgb_to_lab_np(rgb01: np.ndarray) -> np.ndarray:
    """(H,W,3) float sRGB in [0, 1] -> (H,W,3) float32 Lab."""
    with torch.no_grad():
        return _nchw_to_np(rgb_to_lab(_np_to_nchw(rgb01)))


def lab_to_rgb_np(lab: np.ndarray) -> np.ndarray:
    """(H,W,3) Lab -> (H,W,3) float32 sRGB in [0, 1]."""
    with torch.no_grad():
        return _nchw_to_np(lab_to_rgb(_np_to_nchw(lab)))
