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
from pikfix.grey import grey_rgb, luminance
from pikfix.imageio import DecodedImage
from pikfix.inference import ImageInput, RestoreResult, decode_input, working_shape

NULL_CHECKPOINT = "null"  # the value of PIKFIX_CHECKPOINT that selects this model
NULL_MODEL_NAME = "null"
NULL_CHECKPOINT_SHA256 = "0" * 64


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
        self,
        image: ImageInput,
        reference: ImageInput | None = None,
        reference_id: str | None = None,
        colourize: bool = True,
    ) -> RestoreResult:
        """The input's luminance as an exactly grey sRGB photo. The reference and ``colourize`` are
        accepted and change nothing (no colour is ever transferred): ``reference_used=False``."""
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
            provenance=self.provenance(reference_id, False, colourize),
            reference_confidence=None,
        )

    def provenance(
        self, reference_id: str | None, reference_used: bool, colourize: bool = True
    ) -> dict[str, Any]:
        """The same record as the real model's, naming the null model so its output is never mistaken."""
        return {
            "software": f"pikfix {__version__}",
            "model": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "reference_id": reference_id if reference_used else None,
            "reference_used": reference_used,
            "colourized": reference_used,
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": {
                "working_size": self.working_size,
                "colourize": colourize,
                "note": "null model: no restoration",
            },
        }

    def _decode(self, image: ImageInput) -> DecodedImage:
        return decode_input(image, self.max_pixels)


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
