"""Decode uploaded photos safely and encode restored ones with their metadata.

Decoding treats every upload as hostile: the format is sniffed from the bytes (never the file name),
only an allowlist of Pillow decoders may run, the pixel count is checked from the header before any
pixel is decoded, and every failure becomes a ``PikFixInputError`` with a stable code. What archives
care about survives: EXIF orientation is applied to the pixels, the ICC profile is converted to sRGB
(the original is kept on record), 16-bit scans keep 16-bit precision, EXIF/XMP/DPI are carried to
the output, and a provenance record (model, checkpoint hash, reference, parameters) is written as
XMP so a machine can tell what was done to the photo, with the IPTC labels of ``pikfix.labels``
(Digital Source Type, AI system, a ``dc:description`` sentence) in every output format: PNG, JPEG,
16-bit TIFF and lossless JPEG 2000.
"""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import sys
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from PIL import (
    Image,
    ImageCms,
    ImageDraw,
    ImageFont,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    features,
)

from pikfix import __version__, labels
from pikfix.errors import PikFixInputError

log = logging.getLogger(__name__)

# Sniffed name -> Pillow decoder allowed to open it. Everything else is refused before Pillow runs.
_DECODERS: dict[str, tuple[str, ...]] = {
    "png": ("PNG",),
    "jpeg": ("JPEG", "MPO"),
    "tiff": ("TIFF",),
    "bmp": ("BMP",),
    "gif": ("GIF",),
    "webp": ("WEBP",),
}
if features.check("jpg_2000"):
    _DECODERS["jpeg2000"] = ("JPEG2000",)

SUPPORTED_INPUT_FORMATS: frozenset[str] = frozenset(_DECODERS)
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "tiff16", "jp2")
_FORMAT_ALIASES = {
    "jpg": "jpeg", "tif": "tiff16", "tiff": "tiff16", "tiff16": "tiff16", "png": "png", "jpeg": "jpeg",
    "jp2": "jp2", "jpeg2000": "jp2",
}
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "tiff16": "image/tiff", "jp2": "image/jp2"}
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "tiff16": ".tif", "jp2": ".jp2"}

MAX_PIXELS = 250_000_000  # decompression-bomb guard when a caller names no limit of its own
XMP_NAMESPACE = "http://ns.pikfix.org/provenance/1.0/"
_XMP_PREFIX = "pikfix"
_JPEG_XMP_LIMIT = 65_000  # one APP1 segment holds 65,502 bytes after its header
_STRIP_PIXELS = 1 << 20  # rows converted per step are sized to about one megapixel

_ORIENTATION_TAG = 0x0112
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005
_SUBIFD_NAMES = {_EXIF_IFD: "ExifTag", _GPS_IFD: "GPSTag"}  # tifffile's names for the pointer tags
# TIFF layout tags: they describe the source file's pixel storage, not the photo, so they must not
# travel to the output (a TIFF's IFD0 is also its "EXIF"). XMP, ICC and Photoshop blocks travel
# separately or not at all.
_EXIF_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320, 322, 323,
     324, 325, 338, 339, 347, 513, 514, 530, 700, 33723, 34377, 34675, 37724, _INTEROP_IFD}
)


@dataclass
class DecodedImage:
    """A decoded photo in sRGB, oriented upright, with the metadata worth carrying to the output.

    ``exif`` is already cleaned for writing back (orientation reset to 1, the source file's storage
    layout tags removed); ``icc`` is the original profile, kept for the record after the pixels were
    converted to sRGB. ``size`` is (width, height) of ``rgb`` (after the EXIF rotation).
    """

    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1], sRGB
    was_grey: bool
    bit_depth: int  # 8 or 16: the precision the source carried
    size: tuple[int, int]
    format: str  # sniffed input format ("png", "jpeg", "tiff", ...)
    exif: bytes | None = None
    xmp: bytes | None = None
    icc: bytes | None = None
    dpi: tuple[float, float] | None = None

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    @property
    def megapixels(self) -> float:
        return self.size[0] * self.size[1] / 1e6


# ---------------------------------------------------------------------------------------------------
# Format helpers


def normalize_output_format(fmt: str) -> str:
    """Accept the usual spellings (jpg, tif, tiff) and return one of ``OUTPUT_FORMATS``."""
    key = str(fmt).strip().lower().lstrip(".")
    if key not in _FORMAT_ALIASES:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
    return _FORMAT_ALIASES[key]


def content_type_for(fmt: str) -> str:
    return _CONTENT_TYPES[normalize_output_format(fmt)]


def extension_for(fmt: str) -> str:
    return _EXTENSIONS[normalize_output_format(fmt)]


def sniff_image_format(data: bytes) -> str | None:
    """Name the image format from its first bytes, or None when the bytes are not an image we know.

    Known but undecodable formats (psd, heif, avif, jxl, ico, svg) are named too, so the caller can
    tell "unsupported format" from "not an image".
    """
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "bmp"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "jpeg2000"
    if head.startswith(b"8BPS"):
        return "psd"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "heif"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "jxl"
    if head.startswith(b"\x00\x00\x01\x00") and len(head) > 6 and head[4] > 0:
        return "ico"
    text_head = bytes(data[:1024]).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text_head.startswith(b"<svg") or (text_head.startswith(b"<?xml") and b"<svg" in text_head):
        return "svg"
    return None


def _describe_non_image(data: bytes) -> str:
    head = bytes(data[:512]).lstrip(b"\xef\xbb\xbf \t\r\n")
    low = head.lower()
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low[:256]:
        return "an HTML page"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    sample = bytes(data[:4096])
    try:
        sample.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognised binary data"


# ---------------------------------------------------------------------------------------------------
# Decoding


def decode_image(data: bytes | bytearray | memoryview | str | Path, max_pixels: int | None = None) -> DecodedImage:
    """Decode an uploaded photo (bytes or a path) into sRGB float32 with its metadata.

    Raises ``PikFixInputError`` for every kind of bad input; nothing raw from Pillow escapes.
    ``max_pixels`` defaults to ``MAX_PIXELS``, the decompression-bomb limit.
    """
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    data = bytes(data)
    if not data:
        raise PikFixInputError("empty_file", "the file is empty (0 bytes)")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise PikFixInputError("not_an_image", f"the file is not an image: it looks like {_describe_non_image(data)}")
    limit = _resolve_pixel_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd EXIF/bombs; we decide ourselves
            return _decode(data, fmt, limit)
    except PikFixInputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise _classify_failure(exc, data, fmt) from exc


def decode_pil_image(image: Image.Image, max_pixels: int | None = None) -> DecodedImage:
    """Wrap an already opened Pillow image (e.g. from a caller's own pipeline) as a ``DecodedImage``."""
    limit = _resolve_pixel_limit(max_pixels)
    if image.width * image.height > limit:
        raise PikFixInputError("too_many_pixels", _too_many_message(image.size, limit))
    fmt = (image.format or "pil").lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _finish_decode(image, None, fmt)
    except PikFixInputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise PikFixInputError("corrupt_image", f"the image could not be read: {exc}") from exc


def _resolve_pixel_limit(max_pixels: int | None) -> int:
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    # Pillow's own guard (process-wide) refuses anything over twice its limit; our check, made from the
    # header below, is the one that matters, so only ever raise Pillow's limit, never lower it.
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    return max_pixels


def _too_many_message(size: tuple[int, int], limit: int) -> str:
    w, h = size
    return f"the image is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of {limit / 1e6:.1f}"


def open_image(fp: IO[bytes], fmt: str, first_frame: bool = True) -> Image.Image:
    """Open ``fp`` with only the Pillow decoders allowed for its sniffed format ``fmt``.

    Every reader of uploads (decoder, upload checks, reference colour check) opens through here, so
    Pillow never picks a decoder itself. ``first_frame``: animations and multi-page TIFFs are
    positioned on their first frame, the photo (it costs a walk over the frames).
    """
    if fmt not in _DECODERS:
        raise PikFixInputError(
            "unsupported_format", f"{fmt.upper()} images are not supported; use one of {sorted(_DECODERS)}"
        )
    image = Image.open(fp, formats=list(_DECODERS[fmt]))
    if first_frame and getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    return image


def _decode(data: bytes, fmt: str, limit: int) -> DecodedImage:
    image = open_image(io.BytesIO(data), fmt)
    w, h = image.size
    if w <= 0 or h <= 0:
        raise PikFixInputError("corrupt_image", f"the image header declares an empty size {w}x{h}")
    if w * h > limit:  # from the header: no pixel has been decoded yet
        raise PikFixInputError("too_many_pixels", _too_many_message((w, h), limit))
    return _finish_decode(image, data, fmt)


def _finish_decode(image: Image.Image, data: bytes | None, fmt: str) -> DecodedImage:
    if fmt == "jpeg2000" and data is not None:
        image.info.update(_jp2_metadata(data))
    # Decide on the 16-bit path while the decoder tiles are still there: reading PNG EXIF loads pixels.
    wide = data is not None and _is_rgb16(image)
    if not wide:
        image.load()  # decode errors (truncation) surface here, not inside the EXIF reader
    exif, orientation = _read_exif(image)
    xmp = _read_xmp(image)
    icc = image.info.get("icc_profile") or None
    dpi = _read_dpi(image)
    rgb, was_grey, depth = _read_pixels(image, data if wide else None, fmt, icc, orientation)
    height, width = rgb.shape[:2]
    if exif is not None:
        exif = _clean_exif(exif, (width, height))
    return DecodedImage(
        rgb=rgb, was_grey=was_grey, bit_depth=depth, size=(width, height), format=fmt,
        exif=exif, xmp=xmp, icc=icc, dpi=dpi,
    )


def _classify_failure(exc: Exception, data: bytes, fmt: str) -> PikFixInputError:
    if isinstance(exc, Image.DecompressionBombError):
        return PikFixInputError("too_many_pixels", "the image header declares more pixels than the limit allows")
    message = str(exc)
    if isinstance(exc, EOFError) or "truncated" in message.lower() or missing_end_marker(fmt, data, data, len(data)):
        return PikFixInputError("truncated_image", f"the {fmt.upper()} file ends before its image data does")
    if isinstance(exc, UnidentifiedImageError):
        return PikFixInputError("corrupt_image", f"the {fmt.upper()} header is damaged")
    detail = f"{type(exc).__name__}: {message}"[:200]
    return PikFixInputError("corrupt_image", f"the {fmt.upper()} data is damaged ({detail})")


def missing_end_marker(fmt: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes lacks the end its format declares (PNG, JPEG, GIF, WebP): cut off.

    Formats with an explicit end tell truncation apart from other damage. Only the first and last
    few KiB (``head``, ``tail``) are needed, so uploads are checked without being read whole.
    """
    if fmt == "png":
        return b"IEND" not in tail[-64:]
    if fmt == "jpeg":
        return b"\xff\xd9" not in tail[-4096:]
    if fmt == "gif":
        return not tail.rstrip(b"\x00").endswith(b";")
    if fmt == "webp" and len(head) >= 8:
        return int.from_bytes(head[4:8], "little") + 8 > size
    return False


def _read_exif(image: Image.Image) -> tuple[Image.Exif | None, int]:
    try:
        exif = image.getexif()
    except Exception as exc:  # a damaged EXIF block must not cost the photo
        log.warning("ignoring unreadable EXIF data: %s", exc)
        return None, 1
    orientation = exif.get(_ORIENTATION_TAG, 1)
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    return (exif if len(exif) else None), orientation


def _read_xmp(image: Image.Image) -> bytes | None:
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if not xmp and hasattr(image, "tag_v2"):
        xmp = image.tag_v2.get(700)
    if not xmp:
        return None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    elif isinstance(xmp, tuple):  # some TIFF writers store XMP as a tuple of byte values
        xmp = bytes(xmp)
    return bytes(xmp)


def _read_dpi(image: Image.Image) -> tuple[float, float] | None:
    dpi = image.info.get("dpi")
    try:
        x, y = (float(v) for v in dpi)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not (0 < x < 1e6 and 0 < y < 1e6):
        return None
    return (round(x, 2), round(y, 2))  # PNG stores pixels per metre: 600 dpi reads back as 599.9988


# --- pixels -----------------------------------------------------------------------------------------


def _read_pixels(
    image: Image.Image, data: bytes | None, fmt: str, icc: bytes | None, orientation: int
) -> tuple[np.ndarray, bool, int]:
    """Return (rgb float32 HxWx3, was_grey, bit_depth) for every supported mode."""
    mode = image.mode
    if data is not None:  # the caller saw 16-bit RGB(A) decoder tiles
        wide = _load_rgb16(data, fmt)
        if wide is not None:
            return _finish_wide(_orient(wide, orientation), icc, grey=False)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _finish_wide(_orient(_high_depth_grey(image), orientation), icc, grey=True)
    return _finish_8bit(image, icc, orientation)


def _rawmode_of(tile: Any) -> str | None:
    args = tile[3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _is_rgb16(image: Image.Image) -> bool:
    if image.mode not in ("RGB", "RGBA", "RGBX") or not image.tile:
        return False
    return all((_rawmode_of(t) or "").split(";")[-1] in ("16B", "16L", "16N") for t in image.tile)


def _with_rawmode(tile: Any, rawmode: str) -> Any:
    args = tile[3]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    if hasattr(tile, "_replace"):
        return tile._replace(args=args)
    return (tile[0], tile[1], tile[2], args)


def _byte_plane_rawmode(rawmode: str, low: bool) -> str:
    """The rawmode that makes Pillow's unpacker keep the high (or the low) byte of each sample."""
    base, bits = rawmode.rsplit(";", 1)
    endian = bits[-1]
    if endian == "N":
        endian = "L" if sys.byteorder == "little" else "B"
    if low:
        endian = "B" if endian == "L" else "L"
    return f"{base};16{endian}"


def _load_rgb16(data: bytes, fmt: str) -> np.ndarray | None:
    """Decode 16-bit RGB(A) losslessly: uint16 (H, W, C).

    Pillow has no 16-bit RGB mode; it keeps only the high byte of each sample. Decoding twice, once
    told the samples have the opposite byte order, yields the low bytes too (the codec and the PNG
    filters work on the same byte stream; only the final unpack differs).
    """
    planes = []
    padded = False
    try:
        for low in (False, True):
            image = open_image(io.BytesIO(data), fmt)
            padded = image.mode == "RGBX"  # the fourth sample is padding, not alpha
            image.tile = [_with_rawmode(t, _byte_plane_rawmode(_rawmode_of(t) or "", low)) for t in image.tile]
            image.load()
            planes.append(np.asarray(image))
    except (OSError, ValueError, KeyError, SyntaxError) as exc:
        if "truncated" in str(exc).lower():
            raise
        log.warning("16-bit RGB decode fell back to 8 bits: %s", exc)
        return None
    high, low_bytes = planes
    wide = (high.astype(np.uint16) << 8) | low_bytes
    if padded or (wide.shape[2] == 4 and _is_opaque(wide[..., 3], 65535)):
        wide = wide[..., :3]  # opaque alpha: skip compositing
    return wide


def _high_depth_grey(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float grey as float32 (H, W) in [0, 1].

    Mode I is read on the 16-bit scale (it is how Pillow represents 16-bit PNG/TIFF grey); float
    data already in [0, 1] is kept, other float ranges are scaled by their maximum.
    """
    arr = np.asarray(image)
    if image.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max()) if arr.size else 1.0
        scale = 1.0 if peak <= 1.0 else (65535.0 if peak <= 65535.0 else peak)
        return np.clip(arr / np.float32(scale), 0.0, 1.0).astype(np.float32, copy=False)
    if image.mode == "I":
        arr = np.clip(arr, 0, 65535)
    return np.multiply(arr, np.float32(1.0 / 65535.0), dtype=np.float32)


def _is_opaque(alpha: np.ndarray, full: int) -> bool:
    return bool(alpha.min() == full) if alpha.size else True


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the EXIF orientation (1-8) to an (H, W[, C]) array, returning a contiguous array."""
    if orientation in (1, None):
        return arr
    swap = (1, 0, 2) if arr.ndim == 3 else (1, 0)
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).transpose(swap),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr))


def _finish_wide(wide: np.ndarray, icc: bytes | None, grey: bool) -> tuple[np.ndarray, bool, int]:
    """uint16/float high-depth pixels -> (rgb float32, was_grey, 16)."""
    if wide.dtype != np.float32:
        wide = np.multiply(wide, np.float32(1.0 / 65535.0), dtype=np.float32)
    if wide.ndim == 3 and wide.shape[2] == 4:  # RGBA: composite on white, as a print would show it
        alpha = wide[..., 3:4]
        wide = wide[..., :3] * alpha + (1.0 - alpha)
    wide = _convert_wide_to_srgb(wide, icc, grey)
    if wide.ndim == 2:
        return _grey_to_rgb(wide), True, 16
    return np.ascontiguousarray(wide, dtype=np.float32), _channels_equal(wide), 16


def _finish_8bit(image: Image.Image, icc: bytes | None, orientation: int) -> tuple[np.ndarray, bool, int]:
    mode = image.mode
    source_grey = mode in ("1", "L", "LA", "La")
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("LA", "La"):
        image = _composite_on_white(image.convert("LA"))
    elif mode in ("RGBA", "RGBa"):
        image = _composite_on_white(image.convert("RGBA"))
    elif mode == "RGBX":
        image = image.convert("RGB")
    if image.mode == "RGBA":  # from a palette with transparency
        image = _composite_on_white(image)
    transform = _icc_transform(icc, image.mode)
    if transform is not None:
        image = ImageCms.applyTransform(image, transform)
    if image.mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        image = ImageCms.applyTransform(image, ImageCms.buildTransform(lab, _srgb_profile(), "LAB", "RGB"))
    elif image.mode in ("CMYK", "YCbCr", "HSV"):
        image = image.convert("RGB")
    if image.mode not in ("L", "RGB"):
        raise PikFixInputError("unsupported_mode", f"pixel mode {mode!r} is not supported")
    arr = _orient(np.asarray(image), orientation)
    if arr.ndim == 2:
        return _grey_to_rgb(np.multiply(arr, np.float32(1.0 / 255.0), dtype=np.float32)), True, 8
    was_grey = source_grey or _channels_equal(arr)
    return np.multiply(arr, np.float32(1.0 / 255.0), dtype=np.float32), was_grey, 8


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white paper, the way the photo would be printed."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(background, image.convert("RGBA"))
    return flat.convert("L" if image.mode == "LA" else "RGB")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    out = np.empty((*grey.shape, 3), dtype=np.float32)
    out[...] = grey[..., None]
    return out


def _channels_equal(arr: np.ndarray) -> bool:
    rows = max(1, _STRIP_PIXELS // max(1, arr.shape[1]))
    for y in range(0, arr.shape[0], rows):
        s = arr[y : y + rows]
        if not (np.array_equal(s[..., 0], s[..., 1]) and np.array_equal(s[..., 0], s[..., 2])):
            return False
    return True


# --- colour management ------------------------------------------------------------------------------

_SRGB: ImageCms.ImageCmsProfile | None = None


def _srgb_profile() -> ImageCms.ImageCmsProfile:
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB


def srgb_icc_bytes() -> bytes:
    """The sRGB profile embedded in every output (its pixels are sRGB)."""
    return _srgb_profile().tobytes()


def _icc_transform(icc: bytes | None, mode: str, flags: int = 0) -> ImageCms.ImageCmsTransform | None:
    """A transform from the embedded profile to sRGB, or None when none is needed or possible.

    A damaged or mismatched profile is ignored with a warning: the pixels are then taken as sRGB,
    which is what every viewer without colour management does anyway.
    """
    if not icc or mode not in ("L", "RGB", "CMYK"):
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = (ImageCms.getProfileDescription(source) or "").strip()
        if mode == "RGB" and "srgb" in name.lower().replace(" ", ""):
            return None  # already sRGB: converting would only add rounding
        intent = ImageCms.Intent.PERCEPTUAL
        return ImageCms.buildTransform(source, _srgb_profile(), mode, "RGB", renderingIntent=intent, flags=flags)
    except Exception as exc:  # PyCMSError, OSError, TypeError: all mean "unusable profile"
        log.warning("ignoring unusable ICC profile (%d bytes): %s", len(icc), exc)
        return None


def _convert_wide_to_srgb(wide: np.ndarray, icc: bytes | None, grey: bool) -> np.ndarray:
    """Colour-manage 16-bit pixels with LittleCMS without dropping them to 8 bits.

    Pillow runs LittleCMS on 8-bit pixels only, so each pixel is interpolated between the converted
    corners of its 8-bit cell: 16-bit gradations stay smooth (no banding) and the error stays
    within LittleCMS's own 8-bit rounding, for matrix and table-based profiles alike. The grey
    curve (256 samples) skips LittleCMS's 8-bit optimisation, off by up to 10 levels in the
    shadows of linear profiles.
    """
    flags = ImageCms.Flags.NOOPTIMIZE if grey else ImageCms.Flags.NONE
    transform = _icc_transform(icc, "L" if grey else "RGB", flags)
    if transform is None:
        return wide
    return _apply_cms_grey(wide, transform) if grey else _apply_cms_rgb(wide, transform)


def _apply_cms_grey(grey: np.ndarray, transform: ImageCms.ImageCmsTransform) -> np.ndarray:
    """16-bit grey through a grey profile: the 256-entry curve LittleCMS gives, linearly interpolated."""
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8)[None, :])
    curve = np.asarray(ImageCms.applyTransform(ramp, transform), dtype=np.float32)[0].mean(axis=1) / 255.0
    out = np.empty_like(grey)
    rows = max(1, _STRIP_PIXELS // max(1, grey.shape[1]))
    xp = np.linspace(0.0, 1.0, 256)
    for y in range(0, grey.shape[0], rows):
        out[y : y + rows] = np.interp(grey[y : y + rows], xp, curve)
    return out


def _apply_cms_rgb(rgb: np.ndarray, transform: ImageCms.ImageCmsTransform) -> np.ndarray:
    """16-bit RGB through an RGB profile: tetrahedral interpolation between four LittleCMS passes.

    The corners are the cell's base, base + the channel with the largest fraction, base + all but
    the one with the smallest, and base + all; on the grey axis this is linear interpolation, so
    neutral ramps stay monotone.
    """
    out = np.empty(rgb.shape, dtype=np.float32)
    rows = max(1, _STRIP_PIXELS // 4 // max(1, rgb.shape[1]))
    for y in range(0, rgb.shape[0], rows):
        pos = np.clip(rgb[y : y + rows], 0.0, 1.0) * np.float32(255.0)
        base = np.minimum(pos.astype(np.uint8), 254)
        frac = pos - base
        r, g, b = frac[..., 0], frac[..., 1], frac[..., 2]
        high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
        mid = r + g + b - high - low
        # Ties mark several channels, but a tie also gives that corner a weight of zero.
        top, bottom = frac == high[..., None], frac == low[..., None]
        acc = np.zeros(pos.shape, dtype=np.float32)
        corners = (base, base + top, base + 1 - bottom, base + 1)
        for corner, weight in zip(corners, (1.0 - high, high - mid, mid - low, low), strict=True):
            converted = ImageCms.applyTransform(Image.fromarray(corner), transform)
            acc += weight[..., None] * np.asarray(converted, dtype=np.float32)
        out[y : y + rows] = acc / np.float32(255.0)
    return out


# ---------------------------------------------------------------------------------------------------
# Metadata


def _clean_exif(exif: Image.Exif | bytes, size: tuple[int, int]) -> bytes | None:
    """EXIF ready to write onto the restored pixels: upright, sized, without storage-layout tags.

    Dates, camera, GPS, captions and copyright are kept; the embedded thumbnail (IFD1, which shows
    the unrestored photo) and the interoperability pointer (its offset would dangle) are dropped.
    """
    try:
        if isinstance(exif, (bytes, bytearray)):
            source = Image.Exif()
            source.load(bytes(exif))
        else:
            source = exif
        cleaned = Image.Exif()
        for tag, value in source.items():
            if tag in _EXIF_LAYOUT_TAGS:
                continue
            if tag in (_EXIF_IFD, _GPS_IFD):
                sub = {k: v for k, v in source.get_ifd(tag).items() if k not in (_INTEROP_IFD,)}
                if tag == _EXIF_IFD:
                    if 0xA002 in sub:
                        sub[0xA002] = size[0]
                    if 0xA003 in sub:
                        sub[0xA003] = size[1]
                if sub:
                    cleaned[tag] = sub
                continue
            cleaned[tag] = value
        if not len(cleaned):
            return None
        cleaned[_ORIENTATION_TAG] = 1
        return cleaned.tobytes()
    except Exception as exc:
        log.warning("dropping EXIF data that cannot be re-encoded: %s", exc)
        return None


def _exif_object(exif: bytes, size: tuple[int, int]) -> Image.Exif | None:
    cleaned = _clean_exif(exif, size)
    if cleaned is None:
        return None
    out = Image.Exif()
    out.load(cleaned)
    return out


def _provenance_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, default=str)


def _provenance_key(key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key))
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_CAPTION_SEPARATOR = " Original description: "
# Properties that describe how a file was made: the original's values are replaced by the output's own.
_REPLACED_PROPERTIES = (
    (labels.IPTC_EXT_NAMESPACE, tuple(labels.iptc_fields(None))),
    (labels.DC_NAMESPACE, ("description",)),
)


def _provenance_description(provenance: dict[str, Any], captions: list[tuple[str, str]]) -> str:
    """Our rdf:Description: the pikfix record, the IPTC labels, and dc:description with the original's
    captions (each language kept, our sentence in front)."""
    attrs = " ".join(
        f"{_XMP_PREFIX}:{_provenance_key(k)}={quoteattr(_provenance_text(v))}" for k, v in sorted(provenance.items())
    )
    iptc = " ".join(f"Iptc4xmpExt:{k}={quoteattr(v)}" for k, v in labels.iptc_fields(provenance).items())
    sentence = labels.describe(provenance)
    entries = dict(captions) or {"x-default": ""}
    entries = {"x-default": entries.pop("x-default", next(iter(entries.values()))), **entries}
    texts = {lang: sentence + (_CAPTION_SEPARATOR + text if text else "") for lang, text in entries.items()}
    items = "".join(f"<rdf:li xml:lang={quoteattr(lang)}>{escape(text)}</rdf:li>" for lang, text in texts.items())
    return (
        f'<rdf:Description rdf:about="" xmlns:{_XMP_PREFIX}="{XMP_NAMESPACE}" '
        f'xmlns:Iptc4xmpExt="{labels.IPTC_EXT_NAMESPACE}" xmlns:dc="{labels.DC_NAMESPACE}" {attrs} {iptc}>'
        f"<dc:description><rdf:Alt>{items}</rdf:Alt></dc:description></rdf:Description>"
    )


_XPACKET_RE = re.compile(rb"<\?xpacket[^>]*\?>")
_OUR_DESCRIPTION_RE = re.compile(
    r"<rdf:Description\b[^>]*xmlns:pikfix=\"[^\"]*\"[^>]*?(?:/>|(?<!/)>.*?</rdf:Description\s*>)", re.DOTALL
)


def build_xmp(provenance: dict[str, Any] | None, original: bytes | None = None) -> bytes | None:
    """An XMP packet holding the original XMP (if any, orientation reset) plus our provenance record.

    With a provenance record the packet also labels the output (IPTC Digital Source Type, AI system,
    a ``dc:description`` sentence); the original's own values of those properties are replaced.
    """
    if not provenance and not original:
        return None
    body = None
    if original:
        body = _merge_into_original(original, provenance)
    if body is None:
        ours = _provenance_description(provenance, []) if provenance else ""
        body = (
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f"{ours}</rdf:RDF></x:xmpmeta>"
        )
    packet = f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n{body}\n<?xpacket end="w"?>'
    return packet.encode("utf-8")


def _merge_into_original(original: bytes, provenance: dict[str, Any] | None) -> str | None:
    """The original XMP with our description added and the properties it replaces removed; None
    when the original cannot be kept (not UTF-8, not well-formed, or a property not removable)."""
    try:
        text = _XPACKET_RE.sub(b"", original).decode("utf-8").strip().strip("\x00").strip()
        captions = _captions(ET.fromstring(text))
    except UnicodeDecodeError:
        log.warning("dropping original XMP that is not UTF-8")
        return None
    except ET.ParseError as exc:
        log.warning("dropping original XMP that is not well-formed: %s", exc)
        return None
    text = _OUR_DESCRIPTION_RE.sub("", text)  # a photo restored twice keeps only the latest record
    text = re.sub(r'tiff:Orientation="\d"', 'tiff:Orientation="1"', text)
    text = re.sub(r"<tiff:Orientation>\d</tiff:Orientation>", "<tiff:Orientation>1</tiff:Orientation>", text)
    ours = ""
    if provenance:
        text = _remove_replaced_properties(text)
        ours = _provenance_description(provenance, captions)
    end = text.rfind("</rdf:RDF>")
    if end < 0:
        log.warning("dropping original XMP without an rdf:RDF element")
        return None
    merged = text[:end] + ours + text[end:]
    try:
        root = ET.fromstring(merged)
    except ET.ParseError as exc:
        log.warning("dropping original XMP that is not well-formed: %s", exc)
        return None
    replaced = [f"{{{namespace}}}{name}" for namespace, names in _REPLACED_PROPERTIES for name in names]
    if provenance and any(_count_property(root, name) != 1 for name in replaced):
        log.warning("dropping original XMP whose labelling properties could not be replaced")
        return None
    return merged


def _captions(root: ET.Element) -> list[tuple[str, str]]:
    """(language, text) of the original's dc:description; from an earlier pikfix record, only the
    caption it carried over (our old sentence is not a caption)."""
    found: dict[str, str] = {}
    for description in root.iter(f"{_RDF}Description"):
        ours = any(name.startswith("{" + XMP_NAMESPACE + "}") for name in description.attrib)
        items = [("x-default", description.get(f"{{{labels.DC_NAMESPACE}}}description") or "")]
        items += [
            (li.get(_XML_LANG, "x-default"), li.text or "")
            for li in description.iterfind(f"{{{labels.DC_NAMESPACE}}}description/*/{_RDF}li")
        ]
        for lang, text in items:
            if ours:
                text = text.partition(_CAPTION_SEPARATOR)[2]
            if text.strip():
                found.setdefault(lang, text)
    return list(found.items())


def _remove_replaced_properties(text: str) -> str:
    """Remove the properties our description sets (attribute and element forms, any prefix)."""
    for namespace, names in _REPLACED_PROPERTIES:
        bound = rf"xmlns:([A-Za-z_][\w.-]*)\s*=\s*[\"']{re.escape(namespace)}[\"']"
        for prefix in set(re.findall(bound, text)):
            for name in names:
                tag = re.escape(f"{prefix}:{name}")
                text = re.sub(rf"\s{tag}\s*=\s*(?:\"[^\"]*\"|'[^']*')", "", text)
                text = re.sub(rf"<{tag}(?:\s[^>]*)?(?:/>|(?<!/)>.*?</{tag}\s*>)", "", text, flags=re.DOTALL)
    return text


def _count_property(root: ET.Element, name: str) -> int:
    return sum((element.tag == name) + (name in element.attrib) for element in root.iter())


def read_provenance(xmp: bytes | str | None) -> dict[str, str]:
    """The provenance fields written by ``build_xmp`` (values as written: strings or JSON text)."""
    if not xmp:
        return {}
    raw = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
    try:
        root = ET.fromstring(_XPACKET_RE.sub(b"", raw).strip())
    except ET.ParseError:
        return {}
    prefix = "{" + XMP_NAMESPACE + "}"
    out: dict[str, str] = {}
    for element in root.iter():
        for name, value in element.attrib.items():
            if name.startswith(prefix):
                out[name[len(prefix):]] = value
    return out


# ---------------------------------------------------------------------------------------------------
# Encoding


def encode_image(
    rgb: np.ndarray,
    fmt: str,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    provenance: dict[str, Any] | None = None,
    mark: bool = False,
) -> bytes:
    """Encode sRGB float pixels (H, W, 3) or (H, W) in [0, 1] as PNG (8-bit), JPEG (q95), 16-bit TIFF
    or lossless JPEG 2000.

    ``exif`` and ``xmp`` are the original's metadata (e.g. from ``DecodedImage``); the EXIF orientation
    is reset to 1 because the pixels are already upright. ``provenance`` goes into XMP (merged with
    the original XMP, with the IPTC labels of ``pikfix.labels``) and, for PNG, also into iTXt chunks.
    The sRGB colour space is always declared. ``mark`` draws the visible label in the bottom-right corner.
    """
    fmt = normalize_output_format(fmt)
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.ndim != 3 or rgb.shape[2] not in (1, 3) or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) or (H, W) image, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    exif_obj = _exif_object(exif, (width, height)) if exif else None
    packet = build_xmp(provenance, xmp)
    dpi = _valid_dpi(dpi)
    label = labels.mark_text(provenance) if mark else None
    if fmt == "tiff16":
        return _encode_tiff16(_marked(_quantize(rgb, np.uint16), label), exif_obj, packet, dpi)
    if fmt == "jp2":
        return _encode_jp2(rgb, label, exif_obj, packet, dpi)
    pixels = _marked(_quantize(rgb, np.uint8), label)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, mode="L" if pixels.shape[2] == 1 else "RGB")
    out = io.BytesIO()
    options: dict[str, Any] = {"icc_profile": srgb_icc_bytes()}
    if exif_obj is not None:
        options["exif"] = exif_obj
    if dpi is not None:
        options["dpi"] = dpi
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        if packet is not None:
            info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8"))
        for key, value in sorted((provenance or {}).items()):
            info.add_itxt(f"{_XMP_PREFIX}:{_provenance_key(key)}"[:79], _provenance_text(value))
        info.add_text("Software", f"pikfix {__version__}")
        image.save(out, "PNG", pnginfo=info, **options)
    else:
        if packet is not None and len(packet) > _JPEG_XMP_LIMIT:
            log.warning("original XMP too large for JPEG (%d bytes): keeping only the provenance", len(packet))
            packet = build_xmp(provenance, None)
        if dpi is not None:
            options["dpi"] = (round(dpi[0]), round(dpi[1]))
        if packet is not None:
            options["xmp"] = packet  # Pillow >= 11 writes it as an APP1 segment
        image.save(out, "JPEG", quality=95, **options)
    return out.getvalue()


def _valid_dpi(dpi: Any) -> tuple[float, float] | None:
    if dpi is None:
        return None
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    return (x, y) if 0 < x < 1e6 and 0 < y < 1e6 else None


def _quantize(rgb: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Round [0, 1] floats to integers in strips, so no full-size float64 temporary is ever made."""
    top = np.float32(np.iinfo(dtype).max)
    out = np.empty(rgb.shape, dtype=dtype)
    rows = max(1, _STRIP_PIXELS // max(1, rgb.shape[1]))
    for y in range(0, rgb.shape[0], rows):
        strip = np.nan_to_num(rgb[y : y + rows].astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(strip, 0.0, 1.0, out=strip)
        strip *= top
        strip += np.float32(0.5)
        out[y : y + rows] = strip.astype(dtype)
    return out


def _encode_tiff16(pixels: np.ndarray, exif: Image.Exif | None, xmp: bytes | None, dpi: tuple[float, float] | None) -> bytes:
    """An uncompressed little-endian TIFF with 16-bit samples (Pillow cannot write 16-bit RGB).

    tifffile writes the pixels and IFD0, but no EXIF or GPS sub-IFD: those are serialised by Pillow
    after the pixels, and IFD0 points at them through placeholder entries patched afterwards.
    """
    import tifffile  # imported here: the API imports this module only to check uploads

    height, width, channels = pixels.shape
    row_bytes = width * channels * 2
    if height * row_bytes > 0xF000_0000:
        raise ValueError("image too large for a classic TIFF (4 GB); choose PNG or JPEG")
    tags: list[tuple[Any, ...]] = [(_ORIENTATION_TAG, 3, 1, 1, True)]
    if xmp is not None:
        tags.append((700, 1, len(xmp), xmp, True))
    subifds: dict[int, TiffImagePlugin.ImageFileDirectory_v2] = {}
    unit = 2  # inch
    if exif is not None:
        if dpi is None and (dpi := _valid_dpi((exif.get(282), exif.get(283)))) is not None:
            unit = exif.get(296) if exif.get(296) in (1, 3) else 2  # the original's resolution, in its unit
        try:
            exif_tags, subifds = _tiff_exif(exif)
            tags += exif_tags
        except Exception as exc:  # an odd EXIF value the TIFF serialiser cannot write must not cost the photo
            log.warning("writing the TIFF without EXIF, which could not be serialised: %s", exc)
            subifds = {}
    # tifffile refuses IFD pointer tags given by number; by name it writes them (here as placeholders).
    tags += [(_SUBIFD_NAMES[code], 4, 1, 0, True) for code in subifds]
    out = io.BytesIO()
    tifffile.imwrite(
        out, pixels if channels == 3 else pixels[..., 0], byteorder="<", bigtiff=False, metadata=None,
        photometric="rgb" if channels == 3 else "minisblack", rowsperstrip=max(1, (1 << 20) // row_bytes),
        resolution=dpi, resolutionunit=unit if dpi is not None else None, software=f"pikfix {__version__}",
        iccprofile=srgb_icc_bytes() if channels == 3 else None, extratags=tags,
    )
    offsets = {}
    for code, ifd in subifds.items():
        end = out.seek(0, io.SEEK_END)
        offsets[code] = end + end % 2  # IFDs start on a word boundary
        out.write(bytes(end % 2) + ifd.tobytes(offsets[code]))
    with out.getbuffer() as data:
        first = int.from_bytes(data[4:8], "little")
        for entry in range(first + 2, first + 2 + 12 * int.from_bytes(data[first : first + 2], "little"), 12):
            code = int.from_bytes(data[entry : entry + 2], "little")
            if code in offsets:
                data[entry + 8 : entry + 12] = offsets[code].to_bytes(4, "little")
    return out.getvalue()


def _tiff_exif(exif: Image.Exif) -> tuple[list[tuple[Any, ...]], dict[int, TiffImagePlugin.ImageFileDirectory_v2]]:
    """The EXIF as tifffile extratags for IFD0, and its EXIF and GPS sub-IFDs.

    Values are encoded by Pillow's TIFF writer, as Pillow would write them, then handed to tifffile
    unpacked (it counts packed rationals wrongly). Tags tifffile writes itself are left out.
    """
    from tifffile import TIFF

    top = TiffImagePlugin.ImageFileDirectory_v2()
    subifds = {}
    for tag, value in exif.items():
        if tag in _SUBIFD_NAMES:
            if sub := exif.get_ifd(tag):
                subifds[tag] = TiffImagePlugin.ImageFileDirectory_v2(group=tag)
                for key, item in sub.items():
                    subifds[tag][key] = item
                subifds[tag].tobytes(0)  # fail now, not after the pixels were written
        elif tag not in _EXIF_LAYOUT_TAGS and tag not in (_ORIENTATION_TAG, 282, 283, 296, 305):
            top[tag] = value
    raw = top.tobytes(0)
    tags = []
    for i in range(int.from_bytes(raw[:2], "little")):
        code, kind, count, field = struct.unpack_from("<HHI4s", raw, 2 + 12 * i)
        per_value = TIFF.DATA_FORMATS[kind]  # e.g. "2I": a rational is two unsigned longs
        fmt = f"<{count * int(per_value[:-1])}{per_value[-1]}"
        size = struct.calcsize(fmt)
        data = field[:size] if size <= 4 else raw[int.from_bytes(field, "little") :][:size]
        tags.append((code, kind, count, data if kind in (1, 2, 7) else struct.unpack(fmt, data), True))
    return tags, subifds


# --- JPEG 2000 --------------------------------------------------------------------------------------

_JP2_XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")  # XMP specification, part 3
_JP2_EXIF_UUID = b"JpgTiffExif->JP2"  # the de facto EXIF box (ExifTool, digiKam), TIFF data after it


def _encode_jp2(
    rgb: np.ndarray,
    label: str | None,
    exif: Image.Exif | None,
    xmp: bytes | None,
    dpi: tuple[float, float] | None,
) -> bytes:
    """Lossless JPEG 2000 (reversible 5/3 wavelet, one lossless layer) with Pillow's OpenJPEG.

    Grey pixels are written as one 16-bit component; colour as 8-bit RGB with the reversible colour
    transform, because Pillow has no 16-bit RGB mode. OpenJPEG writes no metadata, so the ICC
    profile, resolution, XMP and EXIF boxes are added to the file it wrote.
    """
    wide = _quantize(rgb, np.uint16)
    grey = wide.shape[2] == 1 or _channels_equal(wide)
    if grey:
        pixels = _marked(np.ascontiguousarray(wide[..., :1]), label)
        height, width = pixels.shape[:2]
        image = Image.frombytes("I;16", (width, height), pixels.astype("<u2", copy=False).tobytes())
    else:
        del wide
        image = Image.fromarray(_marked(_quantize(rgb, np.uint8), label), mode="RGB")
    out = io.BytesIO()
    image.save(out, "JPEG2000", irreversible=False, mct=0 if grey else 1)
    boxes = _jp2_boxes(out.getvalue())
    if not boxes or boxes[0][0] != b"jP  " or b"jp2h" not in (kind for kind, _ in boxes):
        raise ValueError("OpenJPEG wrote no JP2 header")
    extra_header = b"" if grey else _jp2_box(b"colr", b"\x02\x00\x00" + srgb_icc_bytes())  # restricted ICC
    if dpi is not None:
        extra_header += _jp2_box(b"res ", _jp2_box(b"resc", _jp2_resolution(dpi)))
    parts = []
    for kind, payload in boxes:
        parts.append(_jp2_box(kind, bytes(payload) + extra_header if kind == b"jp2h" else payload))
        if kind == b"jp2h":  # metadata before the codestream, where streaming readers look
            if xmp is not None:
                parts.append(_jp2_box(b"uuid", _JP2_XMP_UUID + xmp))
            if exif is not None and (tiff := _exif_tiff_bytes(exif)) is not None:
                parts.append(_jp2_box(b"uuid", _JP2_EXIF_UUID + tiff))
    return b"".join(parts)


def _exif_tiff_bytes(exif: Image.Exif) -> bytes | None:
    try:
        return exif.tobytes().removeprefix(b"Exif\x00\x00")
    except Exception as exc:  # an odd EXIF value the serialiser cannot write must not cost the photo
        log.warning("writing the JPEG 2000 file without EXIF, which could not be serialised: %s", exc)
        return None


def _jp2_box(kind: bytes, payload: bytes | memoryview) -> bytes:
    if len(payload) + 8 <= 0xFFFF_FFFF:
        return struct.pack(">I4s", len(payload) + 8, kind) + payload
    return struct.pack(">I4sQ", 1, kind, len(payload) + 16) + payload


def _jp2_boxes(data: bytes | memoryview) -> list[tuple[bytes, memoryview]]:
    """The top-level boxes (type, payload) of a JP2 file, as views (the codestream is not copied);
    stops at the first malformed box header."""
    data = memoryview(data)
    boxes, pos, size = [], 0, len(data)
    while pos + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1 and pos + 16 <= size:
            length, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif length == 0:
            length = size - pos
        if length < header or pos + length > size:
            break
        boxes.append((kind, data[pos + header : pos + length]))
        pos += length
    return boxes


def _jp2_resolution(dpi: tuple[float, float]) -> bytes:
    """A capture resolution box body: pixels per metre as (N / 254) * 10^E per axis (E >= 0 only,
    since Pillow reads the exponent unsigned)."""
    fields = []
    for value in (dpi[1], dpi[0]):  # vertical first
        numerator, exponent = value * 10_000, 0
        while numerator > 0xFFFF:
            numerator, exponent = numerator / 10, exponent + 1
        fields.append((max(1, round(numerator)), exponent))
    (vn, ve), (hn, he) = fields
    return struct.pack(">HHHHbb", vn, 254, hn, 254, ve, he)


def _jp2_metadata(data: bytes) -> dict[str, bytes]:
    """XMP, EXIF and ICC profile of a JP2 file, under the ``info`` keys Pillow uses for other formats.

    Pillow's JPEG 2000 reader returns none of them. Only the first colour specification counts, as
    the JP2 standard says; its ICC profile is taken when it has one.
    """
    info: dict[str, bytes] = {}
    for kind, payload in _jp2_boxes(data):
        uuid = bytes(payload[:16]) if kind == b"uuid" else b""
        if uuid == _JP2_XMP_UUID:
            info.setdefault("xmp", bytes(payload[16:]))
        elif uuid == _JP2_EXIF_UUID:
            info.setdefault("exif", b"Exif\x00\x00" + bytes(payload[16:]).removeprefix(b"Exif\x00\x00"))
        elif kind == b"jp2h":
            colours = [body for name, body in _jp2_boxes(payload) if name == b"colr"]
            if colours and bytes(colours[0][:1]) in (b"\x02", b"\x03") and len(colours[0]) > 3:
                info["icc_profile"] = bytes(colours[0][3:])
    return info


# --- visible mark -----------------------------------------------------------------------------------

_MARK_SHARE = 1 / 40  # text height as a share of the short side
_MARK_MIN_SIZE = 10  # px: smaller is not legible
_MARK_MAX_WIDTH = 0.5  # of the image width


def _marked(pixels: np.ndarray, label: str | None) -> np.ndarray:
    """Draw ``label`` (white on a darkened box) into the bottom-right corner of quantized (H, W, C)
    pixels, in place, at any bit depth; grey pixels stay grey. None: the pixels as they are."""
    if not label:
        return pixels
    mask = _mark_mask(label, *pixels.shape[:2])
    box_h, box_w = mask.shape
    height, width = pixels.shape[:2]
    margin = max(1, round(box_h / 3))
    y0, x0 = max(0, height - margin - box_h), max(0, width - margin - box_w)
    region = pixels[y0 : y0 + box_h, x0 : x0 + box_w]
    alpha = mask[: region.shape[0], : region.shape[1], None]
    top = np.float32(np.iinfo(pixels.dtype).max)
    blended = region.astype(np.float32) * np.float32(0.35) * (1 - alpha) + top * alpha
    region[...] = np.rint(blended).astype(pixels.dtype)
    return pixels


def _mark_mask(label: str, height: int, width: int) -> np.ndarray:
    """The label's box as float32 coverage in [0, 1] (text 1), sized to the image, Pillow's own font."""
    size = max(_MARK_MIN_SIZE, round(min(height, width) * _MARK_SHARE))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(label)
    if right - left > width * _MARK_MAX_WIDTH and size > _MARK_MIN_SIZE:
        size = max(_MARK_MIN_SIZE, int(size * width * _MARK_MAX_WIDTH / (right - left)))
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = font.getbbox(label)
    pad = max(2, size // 3)
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), label, fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32) / np.float32(255.0)
