"""Restore and colourize one photo at its full resolution with a loaded Pik-Fix model.

The restoration runs in overlapping tiles at full resolution and again at the damage scale; the
similarity and colourization sub-nets run at a small working size, because their cost is quadratic in
pixels; the chroma is then up-sampled onto the full-resolution luminance in strips, so memory stays
bounded on any scan. Without a reference, or with ``colourize=False`` (restore-only), the result is the
restored photo in exact grey (R = G = B). The pipeline and its reasons are in docs/model.md, "Notes on
the code".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pikfix import __version__
from pikfix.checkpoint import load_checkpoint
from pikfix.color import model_space_to_rgb, rgb_to_gray01, rgb_to_model_space
from pikfix.errors import PikFixInputError
from pikfix.grey import grey_rgb
from pikfix.imageio import DecodedImage, decode_image, decode_pil_image, encode_image
from pikfix.model import PikFix
from pikfix.nets.tone import apply_curve
from pikfix.tiling import tiled_apply
from pikfix.uri import read_uri_bytes, write_uri_bytes

log = logging.getLogger(__name__)

# Photos may be given decoded, as encoded bytes, a path or s3:// URI, a Pillow image, or an sRGB array
# ((H, W, 3) or (H, W); uint8, uint16, or float in [0, 1]).
ImageInput = DecodedImage | bytes | bytearray | str | Path | Image.Image | np.ndarray

DEFAULT_TILE_CPU = 768
DEFAULT_TILE_CUDA = 2048
LONG_SIDE_CAP = 3  # the working image's long side is at most this many times working_size
# pikfix.degrade draws damage 1-3 px wide on a 256 px short side and proportionally wider above it.
DAMAGE_SIDE = 256
GUIDE_RADIUS = 2  # damage-scale pixels: the guided filter's window is 5x5 there
GUIDE_EPS = 1e-3  # luminance variance below which the correction stays smooth (flat areas, noise)
_STRIP_PIXELS = 1 << 20  # output strips of about one megapixel


@dataclass
class RestoreResult:
    """A restored photo. Arrays are float32; luminance is CIE L/100, chroma ab/110 (model space)."""

    rgb: np.ndarray  # (H, W, 3) sRGB in [0, 1], full resolution
    restored_luminance: np.ndarray  # (H, W)
    input_luminance: np.ndarray  # (H, W)
    ab_working: np.ndarray  # (h, w, 2) chroma at the working resolution (for metrics)
    reference_used: bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode, restore, colorize, compose, total
    provenance: dict[str, Any] = field(default_factory=dict)
    reference_confidence: float | None = None  # mean best-match correlation with the reference, in [-1, 1]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the output."""
        return (self.rgb.shape[1], self.rgb.shape[0])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def working_shape(height: int, width: int, working_size: int) -> tuple[int, int]:
    """(h, w) for colourization: short side ``working_size``, aspect kept, long side capped, never enlarged."""
    scale = min(working_size / min(height, width), LONG_SIDE_CAP * working_size / max(height, width), 1.0)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _rows_per_strip(width: int) -> int:
    return max(1, _STRIP_PIXELS // max(1, width))


def luminance_of(rgb: np.ndarray) -> np.ndarray:
    """CIE L/100 of an (H, W, 3) sRGB image as (H, W) float32, computed in strips."""
    height, width = rgb.shape[:2]
    out = np.empty((height, width), dtype=np.float32)
    rows = _rows_per_strip(width)
    with torch.inference_mode():
        for y in range(0, height, rows):
            strip = torch.from_numpy(np.ascontiguousarray(rgb[y : y + rows], dtype=np.float32))
            out[y : y + rows] = rgb_to_gray01(strip.permute(2, 0, 1)[None])[0, 0].numpy()
    return out


def decoded_from_array(pixels: np.ndarray) -> DecodedImage:
    """An sRGB array as a ``DecodedImage``: uint8, uint16, or float in [0, 1]; (H, W) or (H, W, 3)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3) or 0 in pixels.shape:
        raise PikFixInputError("unsupported_mode", f"expected an (H, W) or (H, W, 3) array, got {pixels.shape}")
    if pixels.dtype == np.uint8:
        rgb, depth = pixels.astype(np.float32) / 255.0, 8
    elif pixels.dtype == np.uint16:
        rgb, depth = pixels.astype(np.float32) / 65535.0, 16
    elif np.issubdtype(pixels.dtype, np.floating):
        rgb, depth = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0), 16
    else:
        raise PikFixInputError("unsupported_mode", f"unsupported array type {pixels.dtype}")
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
        grey = True
    else:
        grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
    height, width = rgb.shape[:2]
    return DecodedImage(rgb=np.ascontiguousarray(rgb), was_grey=grey, bit_depth=depth, size=(width, height), format="array")


def decode_input(image: ImageInput, max_pixels: int | None) -> DecodedImage:
    """Any accepted input (decoded image, bytes, path, s3:// URI, PIL image, array) as a ``DecodedImage``."""
    if isinstance(image, DecodedImage):
        return image
    if isinstance(image, Image.Image):
        return decode_pil_image(image, max_pixels)
    if isinstance(image, np.ndarray):
        return decoded_from_array(image)
    if isinstance(image, str) and image.startswith("s3://"):
        image = read_uri_bytes(image)
    return decode_image(image, max_pixels)


def _short_side(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) scaled so the short side is ``side`` (enlarging too), aspect kept."""
    scale = side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)


def _guided_coefficients(
    guide: torch.Tensor, target: torch.Tensor, radius: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local linear model ``target ~ gain * guide + offset`` (He, Sun and Tang's guided filter).

    Up-sampled and applied to the full-resolution guide (He and Sun's fast guided filter), it gives
    the damage-scale correction the sharp edges of the full-resolution scratch it removes.
    """
    mean_g, mean_t = _box(guide, radius), _box(target, radius)
    cov = _box(guide * target, radius) - mean_g * mean_t
    var = _box(guide * guide, radius) - mean_g * mean_g
    gain = cov / (var + eps)
    offset = mean_t - gain * mean_g
    return _box(gain, radius), _box(offset, radius)


def _upsample_rows(ab: torch.Tensor, y0: int, y1: int, height: int, width: int) -> torch.Tensor:
    """Rows [y0, y1) of ``ab`` (1,2,h,w) bilinearly up-sampled to (height, width), without the full image.

    Same sampling as ``F.interpolate(bilinear, align_corners=False)``: interpolate the needed rows
    along y by hand, then let interpolate scale x only.
    """
    h = ab.shape[-2]
    ys = (torch.arange(y0, y1, dtype=torch.float64) + 0.5) * (h / height) - 0.5
    ys = ys.clamp(0.0, h - 1)
    lo = ys.floor().long()
    hi = (lo + 1).clamp(max=h - 1)
    frac = (ys - lo).to(ab.dtype).view(1, 1, -1, 1)
    rows = ab[:, :, lo] * (1 - frac) + ab[:, :, hi] * frac
    return F.interpolate(rows, size=(y1 - y0, width), mode="bilinear", align_corners=False)


class Restorer:
    """A Pik-Fix model loaded once (per worker process) and ready to restore photos of any size."""

    def __init__(
        self,
        model: PikFix,
        device: str | torch.device = "auto",
        *,
        checkpoint_sha256: str | None = None,
        model_name: str | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        working_size: int | None = None,
        max_pixels: int | None = None,
        autocast: bool = True,
        damage_side: int | None = DAMAGE_SIDE,
        anchor_chroma: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.model.to(memory_format=torch.channels_last)
        self.config = model.config
        self.model_name = model_name or f"pikfix-{model.config.name}"
        self.checkpoint_sha256 = checkpoint_sha256
        self.working_size = int(working_size or model.config.working_size)
        self.tile_overlap = int(tile_overlap if tile_overlap is not None else model.tile_overlap)
        default_tile = DEFAULT_TILE_CUDA if self.device.type == "cuda" else DEFAULT_TILE_CPU
        self.tile_size = int(tile_size or default_tile)
        if self.tile_size < self.tile_overlap + 64:
            raise ValueError(f"tile_size {self.tile_size} is too small for an overlap of {self.tile_overlap}")
        self.max_pixels = max_pixels
        self.damage_side = damage_side  # None: restore at full resolution only (the paper's graph)
        self.anchor_chroma = anchor_chroma  # False: the colorization net's chroma as it is (the paper's graph)
        self.amp_dtype: torch.dtype | None = None
        if autocast and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path | None = None,
        device: str = "auto",
        tile_size: int | None = None,
        working_size: int | None = None,
        **options: Any,
    ) -> Restorer:
        """Load a checkpoint (path, s3:// URI, or None for the shipped lite model); raises
        ``pikfix.checkpoint.CheckpointError`` when it is missing or not a Pik-Fix checkpoint."""
        loaded = load_checkpoint(source, device=resolve_device(device))
        return cls(
            loaded.model,
            device,
            checkpoint_sha256=loaded.sha256,
            model_name=f"pikfix-{loaded.config.name}",
            tile_size=tile_size,
            working_size=working_size,
            **options,
        )

    # --- public API ---------------------------------------------------------------------------------

    def restore(
        self,
        image: ImageInput,
        reference: ImageInput | None = None,
        reference_id: str | None = None,
        colourize: bool = True,
    ) -> RestoreResult:
        """Restore (and, with a colour reference, colourize) one photo at its full resolution.

        ``colourize=False`` is restore-only: the reference is neither read nor used, the colourization
        net does not run, and the output is exactly grey. Given encoded bytes or a path, the decoded
        full-size RGB is released as soon as its luminance is taken (a caller holding a
        ``DecodedImage`` keeps it alive, of course).
        """
        start = time.perf_counter()
        decoded = self._decode(image)
        ref = self._decode_reference(reference) if reference is not None and colourize else None
        timings = {"decode": time.perf_counter() - start}

        with torch.inference_mode():
            t = time.perf_counter()
            input_l = luminance_of(decoded.rgb)
            del decoded, image  # only the luminance is needed now: lets the full-size RGB go early
            restored = self._restore_luminance(input_l)
            timings["restore"] = time.perf_counter() - t

            t = time.perf_counter()
            height, width = input_l.shape
            work_l = _resize(restored, working_shape(height, width, self.working_size))
            confidence = None
            if ref is None:
                ab = torch.zeros((1, 2, *work_l.shape[-2:]), dtype=torch.float32)
            else:
                ab, confidence = self._colorize(work_l, ref)
            reference_used = ref is not None
            del ref, reference
            timings["colorize"] = time.perf_counter() - t

            t = time.perf_counter()
            rgb = self._compose(restored, ab)
            timings["compose"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start

        return RestoreResult(
            rgb=rgb,
            restored_luminance=restored[0, 0].numpy(),
            input_luminance=input_l,
            ab_working=np.ascontiguousarray(ab[0].permute(1, 2, 0).numpy()),
            reference_used=reference_used,
            timings=timings,
            provenance=self.provenance(reference_id, reference_used, colourize),
            reference_confidence=confidence,
        )

    def restore_file(
        self,
        path: str | Path,
        reference_path: str | Path | None = None,
        *,
        out_path: str | Path,
        fmt: str = "png",
        reference_id: str | None = None,
        colourize: bool = True,
        mark: bool = False,
    ) -> RestoreResult:
        """Decode ``path`` (or an s3:// URI), restore, and write ``out_path`` in ``fmt`` with the
        original's EXIF/XMP/DPI and the provenance record, which names the source file and its
        SHA-256. ``colourize=False``: restore-only; ``mark``: the visible corner label."""
        source = read_uri_bytes(path)
        source_record = {
            "source_name": Path(str(path)).name,
            "source_sha256": hashlib.sha256(source).hexdigest(),
        }
        decoded = self._decode(source)
        del source
        exif, xmp, dpi = decoded.exif, decoded.xmp, decoded.dpi
        reference = read_uri_bytes(reference_path) if reference_path is not None and colourize else None
        if reference is not None and reference_id is None:
            reference_id = Path(str(reference_path)).name
        pending = [decoded]
        del decoded  # handed over without a second reference, so restore() can free the pixels early
        result = self.restore(pending.pop(), reference, reference_id=reference_id, colourize=colourize)
        result.provenance.update(source_record)
        data = encode_image(
            result.rgb, fmt, exif=exif, xmp=xmp, dpi=dpi, provenance=result.provenance, mark=mark
        )
        write_uri_bytes(out_path, data)
        return result

    def provenance(
        self, reference_id: str | None, reference_used: bool, colourize: bool = True
    ) -> dict[str, Any]:
        """What was done, for the output's XMP and the job record (``pikfix.labels`` reads it)."""
        return {
            "software": f"pikfix {__version__}",
            "model": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256 or "unknown",
            "reference_id": reference_id if reference_used else None,
            "reference_used": reference_used,
            "colourized": reference_used,  # colour comes only from a reference
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": {
                "colourize": colourize,
                "working_size": self.working_size,
                "tile_size": self.tile_size,
                "tile_overlap": self.tile_overlap,
                "damage_side": self.damage_side,
                "anchor_chroma": self.anchor_chroma,
                "precision": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "float32",
            },
        }

    # --- steps ----------------------------------------------------------------------------------------

    def _decode(self, image: ImageInput) -> DecodedImage:
        return decode_input(image, self.max_pixels)

    def _decode_reference(self, reference: ImageInput) -> DecodedImage:
        try:
            decoded = self._decode(reference)
        except PikFixInputError as exc:
            raise PikFixInputError("bad_reference", f"the reference photo cannot be used: {exc.message}") from exc
        except FileNotFoundError as exc:
            raise PikFixInputError("bad_reference", f"the reference photo does not exist: {exc}") from exc
        if decoded.was_grey:
            raise PikFixInputError("bad_reference", "the reference photo is greyscale: it has no colour to transfer")
        return decoded

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _restore_luminance(self, luminance: np.ndarray) -> torch.Tensor:
        """Local restoration (both scales), then the global tone curve when the model has one;
        returns a (1,1,H,W) float32 CPU tensor."""
        restored = self._restore_local(luminance)
        if self.model.tone is None:
            return restored
        curve = self.model.tone(_resize(restored, _short_side(*restored.shape[-2:], DAMAGE_SIDE)))
        rows = _rows_per_strip(restored.shape[-1])
        for y in range(0, restored.shape[-2], rows):
            restored[:, :, y : y + rows] = apply_curve(restored[:, :, y : y + rows], curve)
        return restored

    def _restore_local(self, luminance: np.ndarray) -> torch.Tensor:
        """Restoration at full resolution, its coarse structure replaced by the damage-scale pass's
        (``out = full + up(small(down(x)) - down(full))``)."""
        image = torch.from_numpy(luminance)[None, None]
        full = self._restore_tiles(image)
        height, width = full.shape[-2:]
        if self.damage_side is None or min(height, width) <= self.damage_side:
            return full
        small_shape = _short_side(height, width, self.damage_side)
        guide = _resize(full, small_shape)
        correction = self._restore_tiles(_resize(image, small_shape)) - guide
        gain, offset = _guided_coefficients(guide, correction, GUIDE_RADIUS, GUIDE_EPS)
        rows = _rows_per_strip(width)
        for y in range(0, height, rows):
            y1 = min(height, y + rows)
            strip = full[:, :, y:y1]
            strip += _upsample_rows(gain, y, y1, height, width) * strip + _upsample_rows(offset, y, y1, height, width)
        return full.clamp_(0.0, 1.0)

    def _restore_tiles(self, image: torch.Tensor) -> torch.Tensor:
        """The restoration sub-net over (1,1,H,W) luminance, tile by tile, on the model's device."""
        def run(tile: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self.model.restore(tile).float().clamp_(0.0, 1.0)

        while True:
            try:
                return tiled_apply(
                    run,
                    image,
                    tile_size=self.tile_size,
                    overlap=self.tile_overlap,
                    align=8,
                    device=self.device,
                    prepare=lambda t: t.contiguous(memory_format=torch.channels_last),
                )
            except torch.cuda.OutOfMemoryError:
                # Another process may share the GPU: halve the tile (and keep it halved) rather than fail.
                smaller = max(self.tile_overlap + 64, self.tile_size // 16 * 8)
                if smaller >= self.tile_size:
                    raise
                log.warning("out of GPU memory with %d px tiles; retrying with %d px", self.tile_size, smaller)
                torch.cuda.empty_cache()
                self.tile_size = smaller

    def _colorize(self, work_l: torch.Tensor, reference: DecodedImage) -> tuple[torch.Tensor, float]:
        """Chroma (1,2,h,w) for the working-size luminance from a colour reference."""
        rh, rw = reference.rgb.shape[:2]
        ref_rgb = torch.from_numpy(reference.rgb).permute(2, 0, 1)[None]
        ref_rgb = _resize(ref_rgb, working_shape(rh, rw, self.working_size)).clamp_(0.0, 1.0)
        ref_l, ref_ab = rgb_to_model_space(ref_rgb.contiguous())
        to_device = {"device": self.device, "memory_format": torch.channels_last}
        with self._autocast():
            out = self.model.colorize(work_l.to(**to_device), ref_l.to(**to_device), ref_ab.to(**to_device))
        ab = out.ab.float().clamp(-1.0, 1.0).cpu()
        if self.anchor_chroma:
            # Classical transfer as the base: the photo's mean chroma is the reference's (what Reinhard
            # gives a grey photo), the net contributes only the variation around it, so a net biased
            # towards one hue cannot cast the whole photo in it.
            ab = ab - ab.mean(dim=(2, 3), keepdim=True) + ref_ab.float().mean(dim=(2, 3), keepdim=True)
        ab = ab.clamp(-1.0, 1.0).contiguous()
        confidence = float(out.confidence[0].float().mean()) if out.confidence else math.nan
        return ab, confidence

    def _compose(self, restored: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
        """Lab(restored L, up-sampled ab) -> sRGB (H,W,3) float32, one horizontal strip at a time;
        without chroma, exact grey (the Lab -> sRGB matrix alone leaves R, G, B a rounding apart)."""
        height, width = restored.shape[-2:]
        if not bool(ab.abs().amax() > 0):
            return grey_rgb(restored[0, 0].numpy())
        rgb = np.empty((height, width, 3), dtype=np.float32)
        rows = _rows_per_strip(width)
        for y in range(0, height, rows):
            chroma = _upsample_rows(ab, y, min(height, y + rows), height, width)
            strip = model_space_to_rgb(restored[:, :, y : y + rows], chroma)
            rgb[y : y + rows] = strip[0].permute(1, 2, 0).numpy()
        return rgb
