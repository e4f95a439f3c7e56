"""A stand-in for the Pik-Fix model that does no restoration: the service's own overhead, measured.

``PIKFIX_CHECKPOINT=null`` makes workers build a :class:`NullRestorer` instead of loading a
checkpoint. It has the same ``restore(...)`` interface and returns the same ``RestoreResult`` as
``pikfix.inference.Restorer``, so every other step of a job (fetch, decode, reference choice,
encode, upload, metrics, database writes) runs exactly as in production, but the model's seconds
per megapixel drop to almost nothing. That is what the service benchmarks need (jobs/s of the
system itself) and what a smoke test of a deployment needs (no weights to ship, no minutes per
photo). Never use it for real work: the output is the input's luminance in grey, and every job
records ``model_name="null"`` and an all-zero checkpoint hash so such results are easy to find.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from pikfix import __version__
from pikfix.color import _LAB_F0, _LAB_SLOPE, _LAB_T0, _XYZ_FROM_RGB, L_SCALE, linear_to_srgb, srgb_to_linear
from pikfix.imageio import DecodedImage
from pikfix.inference import ImageInput, RestoreResult, decode_input, working_shape

NULL_CHECKPOINT = "null"  # the value of PIKFIX_CHECKPOINT that selects this model
NULL_MODEL_NAME = "null"
NULL_CHECKPOINT_SHA256 = "0" * 64
_STRIP_PIXELS = 1 << 20  # colour maths in strips of about one megapixel: bounded memory at any size


class NullRestorer:
    """The model-free restorer: grey output (input luminance, zero chroma) at full resolution."""

    model_name = NULL_MODEL_NAME
    checkpoint_sha256 = NULL_CHECKPOINT_SHA256

    def __init__(self, working_size: int = 256, max_pixels: int | None = None) -> None:
        if working_size < 1:
            raise ValueError(f"working_size must be positive, got {working_size}")
        self.device = torch.device("cpu")
        self.working_size = int(working_size)
        self.max_pixels = max_pixels

    def restore(
        self, image: ImageInput, reference: ImageInput | None = None, reference_id: str | None = None
    ) -> RestoreResult:
        """The input's luminance as a grey sRGB photo. The reference is accepted and ignored (no
        colour is transferred), so the result says ``reference_used=False``."""
        start = time.perf_counter()
        decoded = self._decode(image)
        timings = {"decode": time.perf_counter() - start}
        t = time.perf_counter()
        lum01 = luminance(decoded.rgb)
        del decoded, image
        timings["restore"] = time.perf_counter() - t
        height, width = lum01.shape
        ab_working = np.zeros((*working_shape(height, width, self.working_size), 2), dtype=np.float32)
        timings["colorize"] = 0.0
        t = time.perf_counter()
        rgb = grey_rgb(lum01)
        timings["compose"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        return RestoreResult(
            rgb=rgb,
            restored_luminance=lum01,
            input_luminance=lum01,
            ab_working=ab_working,
            reference_used=False,
            timings=timings,
            provenance=self.provenance(reference_id, False),
            reference_confidence=None,
        )

    def provenance(self, reference_id: str | None, reference_used: bool) -> dict[str, Any]:
        """The same record as the real model's, naming the null model so its output is never mistaken."""
        return {
            "software": f"pikfix {__version__}",
            "model": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "reference_id": reference_id if reference_used else None,
            "reference_used": reference_used,
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": {"working_size": self.working_size, "note": "null model: no restoration"},
        }

    def _decode(self, image: ImageInput) -> DecodedImage:
        return decode_input(image, self.max_pixels)


def _strip_rows(width: int) -> int:
    return max(1, _STRIP_PIXELS // max(1, width))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """CIE L/100 of (H, W, 3) sRGB in [0, 1] as (H, W) float32, with ``pikfix.color``'s constants.

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
    """(H, W) CIE L/100 -> (H, W, 3) float32 sRGB with zero chroma (exactly grey), in strips."""
    height, width = lum01.shape
    rgb = np.empty((height, width, 3), dtype=np.float32)
    f0 = _LAB_F0 + _LAB_SLOPE * _LAB_T0  # f where the cube root meets the linear segment
    rows = _strip_rows(width)
    for y in range(0, height, rows):
        fy = (np.clip(lum01[y : y + rows], 0.0, 1.0) * L_SCALE + 16.0) / 116.0
        lum_y = np.where(fy > f0, np.maximum(fy, f0) ** 3, (fy - _LAB_F0) / _LAB_SLOPE)
        rgb[y : y + rows] = linear_to_srgb(lum_y)[..., None]
    return rgb


def is_null_checkpoint(checkpoint: object) -> bool:
    """Whether a configured checkpoint names the null model (``null``, any case, spaces ignored)."""
    return checkpoint is not None and str(checkpoint).strip().lower() == NULL_CHECKPOINT


__all__ = [
    "NULL_CHECKPOINT",
    "NULL_CHECKPOINT_SHA256",
    "NULL_MODEL_NAME",
    "NullRestorer",
    "grey_rgb",
    "is_null_checkpoint",
    "luminance",
]
