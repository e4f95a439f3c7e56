"""The batch report: ``report.json`` for machines and one self-contained ``report.html`` for people.

A finished batch is only useful if someone can see at a glance what went wrong. The report puts the
counts and timings on top, then the photos a human should look at (failures, weak references,
dull/sepia or garish colours, out-of-gamut chroma) and then every other photo, each with its original,
its restored result and the reference that coloured it side by side. The figures and flags are computed
in :mod:`workers.report_stats`; this module makes the previews and fills ``templates/report.html``.

The HTML page has no external URL at all: CSS is inline, images are small JPEG thumbnails embedded as
``data:`` URIs, and a Content-Security-Policy forbids scripts, so the page opens anywhere (an archive's
file share, an e-mail attachment) and a hostile file name can do nothing even if escaping were missed.
The template is autoescaped, so every string that comes from the data is escaped.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from PIL import Image, ImageOps, UnidentifiedImageError

# build_report and ReportError are re-exported: callers build, render and catch through this module.
from workers.report_stats import (
    FLAG_COLOURFULNESS_OUTLIER,
    FLAG_FAILED,
    FLAG_LOW_REFERENCE_SCORE,
    FLAG_NO_REFERENCE,
    FLAG_OUT_OF_GAMUT,
    _number,
    split_for_review,
    summarize,
)
from workers.report_stats import ReportError as ReportError
from workers.report_stats import build_report as build_report

log = logging.getLogger(__name__)

ImageSource = Callable[[dict, str], bytes | None]
"""``images(job, kind)`` returns the encoded image for kind "original" | "restored" | "reference", or None."""

IMAGE_KINDS = ("original", "restored", "reference")

# --------------------------------------------------------------------------- thumbnails
THUMB_PX = 256  # longest side; ~10-20 kB per JPEG, so thousands of photos stay a page a browser opens
THUMB_JPEG_QUALITY = 72
DISPLAY_PX = 200  # CSS size a preview is shown at
# Budget for all embedded thumbnails (base64 bytes). ~30 kB per photo at 256 px puts ~1,600 photos in a
# ~50 MB page, which Chromium opens in a few seconds; past it, photos get a placeholder instead of a preview
# (flagged photos are rendered first, so they keep theirs). report.json always lists every photo.
MAX_EMBEDDED_IMAGE_BYTES = 50_000_000
# Decoders accepted for previews; anything else is shown as a placeholder, never handed to a rarer codec.
THUMB_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF")  # JPEG covers MPO camera files


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB for JPEG: scales 16/32-bit grey to 0-255 and lays transparency on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


_RESIZABLE_MODES = ("RGB", "L", "CMYK", "YCbCr")


def make_thumbnail(
    data: bytes, size: int = THUMB_PX, quality: int = THUMB_JPEG_QUALITY
) -> tuple[bytes, int, int]:
    """JPEG bytes, width and height of a preview at most ``size`` px on its longest side.

    Raises :class:`PIL.UnidentifiedImageError` or :class:`OSError` for data that does not decode.
    """
    with Image.open(io.BytesIO(data), formats=THUMB_FORMATS) as img:
        if img.format in ("JPEG", "MPO"):
            img.draft("RGB", (size, size))  # DCT scaling: decodes a 100 MP scan at 1/8 size, fast
        img = ImageOps.exif_transpose(img)
        if img.mode not in _RESIZABLE_MODES:
            img = _to_rgb(
                img
            )  # 16-bit, alpha and palette modes: normalise first, they resample badly or not at all
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        rgb = _to_rgb(img)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue(), rgb.width, rgb.height


# --------------------------------------------------------------------------- HTML

_KIND_LABEL = {"original": "Original", "restored": "Restored", "reference": "Reference"}

_FLAG_HELP = {
    FLAG_FAILED: "the job failed",
    FLAG_NO_REFERENCE: "no matching reference; a fallback coloured it",
    FLAG_LOW_REFERENCE_SCORE: "the reference is a weak match",
    FLAG_COLOURFULNESS_OUTLIER: "colours unusually dull/sepia or garish for this batch",
    FLAG_OUT_OF_GAMUT: "many pixels had colours outside sRGB",
}


def _fmt(value: Any, unit: str = "") -> str:
    """Rounded for reading: 3 decimals below 1, 2 below 100, 1 above; non-numbers shown as text."""
    value = None if isinstance(value, Undefined) else value  # a key missing from the dict reads as None
    x = _number(value)
    if x is None:
        return "–" if value is None or isinstance(value, float) else str(value)
    if x == int(x) and abs(x) < 1e15:
        text = f"{int(x):,}"
    elif abs(x) < 1:
        text = f"{x:.3f}"
    elif abs(x) < 100:
        text = f"{x:.2f}"
    else:
        text = f"{x:,.1f}"
    return text + unit


def _fmt_duration(seconds: Any) -> str:
    s = None if isinstance(seconds, Undefined) else _number(seconds)
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.2f} s"
    minutes, sec = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


# Autoescaped (the template is .html): every value from the data is escaped; None prints as nothing.
_ENV = Environment(
    loader=PackageLoader("workers", "templates"),
    autoescape=select_autoescape(),
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=lambda value: "" if value is None else value,
    keep_trailing_newline=True,
)
_ENV.filters.update(num=_fmt, duration=_fmt_duration)


@dataclass(frozen=True)
class _Figure:
    """One preview: an embedded JPEG (``src``) or, when there is none, a placeholder saying ``why``."""

    label: str
    src: str = ""
    width: int = 0
    height: int = 0
    why: str = ""


class _Thumbnailer:
    """Fetches and shrinks each image once; never lets one bad image break the whole report."""

    def __init__(self, images: ImageSource, size: int, quality: int, budget: int) -> None:
        self.images, self.size, self.quality = images, size, quality
        self.budget_left = budget
        self.omitted = 0

    def figure(self, job: dict, kind: str) -> _Figure:
        label = _KIND_LABEL[kind]
        if self.budget_left <= 0:  # stop fetching too: decoding 50,000 scans nobody will see is wasted time
            self.omitted += 1
            return _Figure(label, why="preview omitted: report size limit")
        try:
            data = self.images(job, kind)
        except Exception as exc:  # storage outage, missing object: a placeholder, not a failed report
            log.warning("report: could not fetch %s image of job %s: %s", kind, job.get("id"), exc)
            return _Figure(label, why="image unavailable")
        if not data:
            return _Figure(label, why=f"no {kind} image")
        try:
            thumb, width, height = make_thumbnail(data, self.size, self.quality)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("report: %s image of job %s does not decode: %s", kind, job.get("id"), exc)
            return _Figure(label, why="unreadable image")
        src = "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")
        if len(src) > self.budget_left:
            self.budget_left = 0
            self.omitted += 1
            return _Figure(label, why="preview omitted: report size limit")
        self.budget_left -= len(src)
        return _Figure(label, src, width, height)


def _row(job: dict, reasons: list[str], thumbs: _Thumbnailer) -> dict[str, Any]:
    """What the template shows for one job besides the job itself: its flags, previews and ranked candidates."""
    candidates = job.get("candidates") or []
    ranked = sorted(candidates, key=lambda c: (_number(c.get("rank")) is None, _number(c.get("rank")) or 0))
    figures = [thumbs.figure(job, kind) for kind in IMAGE_KINDS]
    return {"job": job, "reasons": reasons, "figures": figures, "candidates": ranked}


def render_html(
    report: dict,
    images: ImageSource,
    *,
    thumb_px: int = THUMB_PX,
    jpeg_quality: int = THUMB_JPEG_QUALITY,
    max_image_bytes: int = MAX_EMBEDDED_IMAGE_BYTES,
) -> str:
    """One self-contained HTML page: summary, photos needing review, then every other photo.

    Each job appears once (flagged ones in the review table), so each thumbnail is embedded once, and
    all of them together stay under ``max_image_bytes``.
    """
    flagged, others = split_for_review(report)
    thumbs = _Thumbnailer(images, thumb_px, jpeg_quality, max_image_bytes)
    # Flagged rows are built first so that they get the image budget first.
    flagged_rows = [_row(job, reasons, thumbs) for job, reasons in flagged]
    other_rows = [_row(job, [], thumbs) for job in others]
    # Shown a little smaller than stored: three previews and four columns fit a laptop screen, and the
    # extra pixels keep them sharp on high-density displays.
    shown = min(thumb_px, DISPLAY_PX)
    return _ENV.get_template("report.html").render(
        batch=report.get("batch") or {},
        model=report.get("model") or {},
        summary=report.get("summary") or summarize(report),
        flagged_rows=flagged_rows,
        other_rows=other_rows,
        omitted=thumbs.omitted,
        flag_help=_FLAG_HELP,
        px=shown,
        ph=max(48, shown * 3 // 4),
    )


# --------------------------------------------------------------------------- files


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None and datetimes by ISO strings, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def report_json(report: dict) -> str:
    """``report.json`` text: strict JSON (NaN/inf become null), UTF-8 names kept readable."""
    return json.dumps(_json_safe(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: dict, images: ImageSource, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    _write_atomic(json_path, report_json(report))
    _write_atomic(html_path, render_html(report, images))
    return json_path, html_path
