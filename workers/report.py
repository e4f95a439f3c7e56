"""The batch report: ``report.json`` for machines and one self-contained ``report.html`` for people.

A finished batch is only useful if someone can see at a glance what went wrong. The report puts the
counts and timings on top, then the photos a human should look at (failures, weak references,
dull/sepia or garish colours, out-of-gamut chroma) and then every other photo, each with its original,
its restored result and the reference that coloured it side by side.

The HTML page has no external URL at all: CSS is inline, images are small JPEG thumbnails embedded as
``data:`` URIs, and a Content-Security-Policy forbids scripts, so the page opens anywhere (an archive's
file share, an e-mail attachment) and a hostile file name can do nothing even if escaping were missed.
Every string that comes from the data goes through :func:`html.escape`.

The report dict is plain JSON (job ids, timestamps as ISO strings), so ``render_html`` works the same
on a fresh :func:`build_report` result and on a ``report.json`` read back from disk.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

ImageSource = Callable[[dict, str], bytes | None]
"""``images(job, kind)`` returns the encoded image for kind "original" | "restored" | "reference", or None."""

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
IMAGE_KINDS = ("original", "restored", "reference")

# --------------------------------------------------------------------------- review thresholds
# Reasons, in the order they are listed for a photo.
FLAG_FAILED = "failed"
FLAG_NO_REFERENCE = "no_reference"
FLAG_LOW_REFERENCE_SCORE = "low_reference_score"
FLAG_COLOURFULNESS_OUTLIER = "colourfulness_outlier"
FLAG_OUT_OF_GAMUT = "out_of_gamut"
FLAG_REASONS = (
    FLAG_FAILED,
    FLAG_NO_REFERENCE,
    FLAG_LOW_REFERENCE_SCORE,
    FLAG_COLOURFULNESS_OUTLIER,
    FLAG_OUT_OF_GAMUT,
)

# Reference total score (texture + structure similarity, 1.0 = identical) below which the reference is
# too unlike the photo to trust its colours, whatever the rest of the batch looks like.
REFERENCE_SCORE_FLOOR = 0.35
# Fraction of a batch's scored photos that forms its "lowest decile" of reference scores.
LOW_REFERENCE_FRACTION = 0.10
# Below this many scored photos a decile is not a meaningful group: only the absolute floor applies.
MIN_JOBS_FOR_DECILE = 10

# Robust z-score (Iglewicz & Hoaglin): z = 0.6745 * (x - median) / MAD; |z| above 3.5 is an outlier.
# Both tails are flagged: low = dull or sepia, high = garish or blotchy.
COLOURFULNESS_Z_THRESHOLD = 3.5
ROBUST_Z_SCALE = 0.6745
# MAD is floored at this fraction of the median, so a batch of near-identical values (MAD ~ 0) does not
# flag differences nobody could see; it also keeps the score independent of the colourfulness scale.
COLOURFULNESS_MIN_RELATIVE_MAD = 0.05
# Fewer values than this and the median/MAD are themselves too noisy to judge outliers by.
MIN_JOBS_FOR_COLOURFULNESS = 5

# Fraction of pixels whose predicted chroma fell outside sRGB and was clipped; above it, colours smear.
OUT_OF_GAMUT_MAX_RATE = 0.02

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


class ReportError(ValueError):
    """The report dict lacks what a report needs (e.g. ``jobs`` is not a list)."""


# --------------------------------------------------------------------------- numbers


def _number(value: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN/inf (bool is not a number here)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    # Naive timestamps are UTC throughout the service; make them comparable with aware ones.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _reference_score(job: Mapping[str, Any]) -> float | None:
    ref = job.get("reference") or {}
    score = _number(ref.get("total"))
    if score is None:
        score = _number((job.get("metrics") or {}).get("reference_score"))
    return score


def _uses_fallback(job: Mapping[str, Any]) -> bool:
    ref = job.get("reference")
    return not ref or ref.get("source") == "fallback"


# --------------------------------------------------------------------------- flags


def _low_reference_ids(jobs: list[Mapping[str, Any]]) -> set[Any]:
    scored = [
        (job["id"], score)
        for job in jobs
        if job.get("status") == "succeeded"
        and not _uses_fallback(job)
        and (score := _reference_score(job)) is not None
    ]
    flagged = {job_id for job_id, score in scored if score < REFERENCE_SCORE_FLOOR}
    if len(scored) >= MIN_JOBS_FOR_DECILE:
        values = sorted(score for _, score in scored)
        k = max(1, math.floor(len(values) * LOW_REFERENCE_FRACTION))
        cutoff = values[k - 1]
        median = float(np.median(values))
        # "< median" keeps a batch whose scores are all equal from having a tenth of it flagged for nothing.
        flagged |= {job_id for job_id, score in scored if score <= cutoff and score < median}
    return flagged


def colourfulness_z_scores(jobs: Iterable[Mapping[str, Any]]) -> dict[Any, float]:
    """Robust z-score of each succeeded job's colourfulness against the batch (empty if too few values)."""
    values = [
        (job["id"], value)
        for job in jobs
        if job.get("status") == "succeeded"
        and (value := _number((job.get("metrics") or {}).get("colourfulness"))) is not None
    ]
    if len(values) < MIN_JOBS_FOR_COLOURFULNESS:
        return {}
    arr = np.array([v for _, v in values], dtype=np.float64)
    median = float(np.median(arr))
    mad = float(np.median(np.abs(arr - median)))
    scale = max(mad, COLOURFULNESS_MIN_RELATIVE_MAD * abs(median))
    if scale == 0.0:
        return {}
    return {job_id: ROBUST_Z_SCALE * (v - median) / scale for job_id, v in values}


def flag_for_review(jobs: list[dict]) -> dict[Any, list[str]]:
    """Jobs a human should look at, mapped to the reasons (in :data:`FLAG_REASONS` order).

    Only failed and succeeded jobs are judged; queued, running and cancelled ones are not results yet.
    Jobs with no reason are absent from the result.
    """
    low_reference = _low_reference_ids(jobs)
    z_scores = colourfulness_z_scores(jobs)
    flags: dict[Any, list[str]] = {}
    for job in jobs:
        reasons: list[str] = []
        status = job.get("status")
        if status == "failed":
            reasons.append(FLAG_FAILED)
        elif status == "succeeded":
            if _uses_fallback(job):
                reasons.append(FLAG_NO_REFERENCE)
            if job["id"] in low_reference:
                reasons.append(FLAG_LOW_REFERENCE_SCORE)
            if abs(z_scores.get(job["id"], 0.0)) > COLOURFULNESS_Z_THRESHOLD:
                reasons.append(FLAG_COLOURFULNESS_OUTLIER)
            gamut = _number((job.get("metrics") or {}).get("out_of_gamut_rate"))
            if gamut is not None and gamut > OUT_OF_GAMUT_MAX_RATE:
                reasons.append(FLAG_OUT_OF_GAMUT)
        if reasons:
            flags[job["id"]] = reasons
    return flags


# --------------------------------------------------------------------------- summary


def _jobs_of(report: Mapping[str, Any]) -> list[dict]:
    jobs = report.get("jobs", [])
    if not isinstance(jobs, list):
        raise ReportError(f"report['jobs'] must be a list, not {type(jobs).__name__}")
    return jobs


def _flags_of(report: Mapping[str, Any]) -> dict[str, list[str]]:
    """The report's flags keyed by ``str(job_id)`` (JSON object keys), computed if the report has none."""
    if report.get("flags") is not None:
        return {str(k): list(v) for k, v in report["flags"].items()}
    return {str(k): v for k, v in flag_for_review(_jobs_of(report)).items()}


def summarize(report: dict) -> dict:
    """Counts per status, wall time, job-time statistics, throughput and review counts.

    Job-time statistics and throughput cover succeeded jobs only: a photo rejected at decode takes
    milliseconds and would make the service look faster than it is. Wall time runs from the batch's
    ``created_at`` to ``finished_at`` (None while the batch is unfinished), so it includes queueing.
    """
    jobs = _jobs_of(report)
    batch = report.get("batch") or {}

    counts = dict.fromkeys(STATUSES, 0)
    for job in jobs:
        status = str(job.get("status"))
        counts[status] = counts.get(status, 0) + 1

    succeeded = [job for job in jobs if job.get("status") == "succeeded"]
    durations = [d for job in succeeded if (d := _number(job.get("duration_s"))) is not None]
    timed_mp = [
        (d, w * h / 1e6)
        for job in succeeded
        if (d := _number(job.get("duration_s"))) is not None
        and (w := _number(job.get("width")))
        and (h := _number(job.get("height")))
    ]

    created = _parse_time(batch.get("created_at"))
    finished = _parse_time(batch.get("finished_at"))
    wall_s = max(0.0, (finished - created).total_seconds()) if created and finished else None
    mean_s = sum(durations) / len(durations) if durations else None

    error_codes: dict[str, int] = {}
    for job in jobs:
        if job.get("status") == "failed":
            code = str(job.get("error_code") or "unknown")
            error_codes[code] = error_codes.get(code, 0) + 1

    flags = _flags_of(report)
    by_reason = dict.fromkeys(FLAG_REASONS, 0)
    for reasons in flags.values():
        for reason in reasons:
            by_reason[reason] = by_reason.get(reason, 0) + 1

    total_mp = sum(mp for _, mp in timed_mp)
    return {
        "total": len(jobs),
        "counts": counts,
        "wall_s": wall_s,
        "mean_job_s": mean_s,
        "p50_job_s": _percentile(durations, 50),
        "p95_job_s": _percentile(durations, 95),
        "max_job_s": max(durations) if durations else None,
        "photos_per_hour": len(succeeded) * 3600.0 / wall_s if wall_s else None,
        # What one worker sustains back to back; the batch figure above also reflects parallelism and queueing.
        "photos_per_hour_per_worker": 3600.0 / mean_s if mean_s else None,
        "megapixels": total_mp,
        "s_per_megapixel": sum(d for d, _ in timed_mp) / total_mp if total_mp else None,
        "error_codes": error_codes,
        "flagged": len(flags),
        "flags_by_reason": by_reason,
    }


def build_report(batch: dict, model: dict, jobs: list[dict]) -> dict:
    """The full report (the content of ``report.json``): inputs plus ``summary`` and ``flags``.

    ``flags`` maps ``str(job_id)`` to its reasons, so the dict survives a JSON round trip unchanged.
    """
    report: dict[str, Any] = {"batch": dict(batch), "model": dict(model), "jobs": list(jobs)}
    report["flags"] = {str(job_id): reasons for job_id, reasons in flag_for_review(report["jobs"]).items()}
    report["summary"] = summarize(report)
    return report


# --------------------------------------------------------------------------- thumbnails


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

_CSS = """
:root{--fg:#1d2330;--muted:#5c6677;--line:#d9dee7;--bg:#f6f7f9;--warn:#a1410b;--bad:#b3261e;--ok:#1e6b3a}
*{box-sizing:border-box}
body{margin:0;padding:24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}
.muted{color:var(--muted)}code{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}
.card.failed b{color:var(--bad)}.card.succeeded b{color:var(--ok)}.card.flagged b{color:var(--warn)}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}
th,td{border-bottom:1px solid var(--line);padding:8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
.thumbs{display:flex;gap:8px}
.scroll{overflow-x:auto}
figure{margin:0;width:@PX@px}
figure img{display:block;width:auto;height:auto;max-width:@PX@px;max-height:@PX@px;border-radius:4px;background:#eee}
figcaption{font-size:12px;color:var(--muted);margin-top:2px}
.ph{width:@PX@px;height:@PH@px;border:2px dashed #b8bfcc;border-radius:4px;display:flex;align-items:center;
justify-content:center;text-align:center;color:var(--muted);font-size:12px;padding:8px;background:#fafbfc}
.status{font-weight:600}.status.failed{color:var(--bad)}.status.succeeded{color:var(--ok)}
.flag{display:inline-block;background:#fdecdf;color:var(--warn);border-radius:10px;padding:1px 8px;margin:1px;
font-size:12px}
.err{color:var(--bad);word-break:break-word}
.cancelled{background:#fdecdf;border:1px solid #f0c8a8;border-radius:8px;padding:8px 12px;margin:10px 0 0}
dl{margin:0;display:grid;grid-template-columns:auto auto;gap:0 10px;font-size:12px}dt{color:var(--muted)}dd{margin:0}
.name{overflow-wrap:anywhere;font-weight:600}
td:first-child{min-width:140px;max-width:240px}
"""

_KIND_LABEL = {"original": "Original", "restored": "Restored", "reference": "Reference"}

_FLAG_HELP = {
    FLAG_FAILED: "the job failed",
    FLAG_NO_REFERENCE: "no matching reference; a fallback coloured it",
    FLAG_LOW_REFERENCE_SCORE: "the reference is a weak match",
    FLAG_COLOURFULNESS_OUTLIER: "colours unusually dull/sepia or garish for this batch",
    FLAG_OUT_OF_GAMUT: "many pixels had colours outside sRGB",
}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, unit: str = "") -> str:
    """Rounded for reading: 3 decimals below 1, 2 below 100, 1 above; non-numbers escaped as text."""
    x = _number(value)
    if x is None:
        return "–" if value is None or isinstance(value, float) else _e(value)
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
    s = _number(seconds)
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.2f} s"
    minutes, sec = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


class _Thumbnailer:
    """Fetches and shrinks each image once; never lets one bad image break the whole report."""

    def __init__(self, images: ImageSource, size: int, quality: int, budget: int) -> None:
        self.images, self.size, self.quality = images, size, quality
        self.budget_left = budget
        self.omitted = 0

    def figure(self, job: dict, kind: str) -> str:
        label = _KIND_LABEL[kind]
        name = _e(job.get("input_name"))
        if self.budget_left <= 0:  # stop fetching too: decoding 50,000 scans nobody will see is wasted time
            self.omitted += 1
            return self._placeholder(label, "preview omitted: report size limit")
        try:
            data = self.images(job, kind)
        except Exception as exc:  # storage outage, missing object: a placeholder, not a failed report
            log.warning("report: could not fetch %s image of job %s: %s", kind, job.get("id"), exc)
            return self._placeholder(label, "image unavailable")
        if not data:
            return self._placeholder(label, f"no {kind} image")
        try:
            thumb, width, height = make_thumbnail(data, self.size, self.quality)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("report: %s image of job %s does not decode: %s", kind, job.get("id"), exc)
            return self._placeholder(label, "unreadable image")
        src = "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")
        if len(src) > self.budget_left:
            self.budget_left = 0
            self.omitted += 1
            return self._placeholder(label, "preview omitted: report size limit")
        self.budget_left -= len(src)
        return (
            f'<figure><img src="{src}" width="{width}" height="{height}" alt="{_e(label)}: {name}" '
            f'decoding="async"><figcaption>{_e(label)}</figcaption></figure>'
        )

    @staticmethod
    def _placeholder(label: str, why: str) -> str:
        return (
            f'<figure><div class="ph" role="img" aria-label="{_e(label)}: {_e(why)}">{_e(why)}</div>'
            f"<figcaption>{_e(label)}</figcaption></figure>"
        )


def _metrics_html(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return '<span class="muted">–</span>'
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_fmt(v)}</dd>" for k, v in metrics.items())
    return f"<dl>{rows}</dl>"


def _reference_html(job: Mapping[str, Any]) -> str:
    ref = job.get("reference")
    if not ref:
        return '<span class="muted">none</span>'
    parts = [
        f'<div class="name">{_e(ref.get("name") or ref.get("id"))}</div>',
        f'<div class="muted">{_e(ref.get("source") or "")}</div>',
        "<dl>"
        f"<dt>total</dt><dd>{_fmt(ref.get('total'))}</dd>"
        f"<dt>texture</dt><dd>{_fmt(ref.get('texture'))}</dd>"
        f"<dt>structure</dt><dd>{_fmt(ref.get('structure'))}</dd>"
        "</dl>",
    ]
    candidates = job.get("candidates") or []
    if candidates:
        ranked = sorted(
            candidates, key=lambda c: (_number(c.get("rank")) is None, _number(c.get("rank")) or 0)
        )
        items = "".join(
            f'<li>{_e(c.get("name") or c.get("id"))} <span class="muted">{_fmt(c.get("total"))}</span></li>'
            for c in ranked[:5]
        )
        more = f'<div class="muted">+{len(candidates) - 5} more</div>' if len(candidates) > 5 else ""
        noun = "candidate" if len(candidates) == 1 else "candidates"
        parts.append(f"<details><summary>{len(candidates)} {noun}</summary><ol>{items}</ol>{more}</details>")
    return "".join(parts)


def _job_row(job: dict, reasons: list[str], thumbs: _Thumbnailer) -> str:
    status = str(job.get("status") or "unknown")
    size = ""
    if job.get("width") and job.get("height"):
        size = f'<div class="muted">{_e(job.get("width"))} × {_e(job.get("height"))} px</div>'
    error = ""
    if job.get("error_code") or job.get("error_message"):
        error = (
            f'<div class="err"><code>{_e(job.get("error_code") or "")}</code> {_e(job.get("error_message") or "")}'
            "</div>"
        )
    flags = "".join(f'<span class="flag" title="{_e(_FLAG_HELP.get(r, r))}">{_e(r)}</span>' for r in reasons)
    figures = "".join(thumbs.figure(job, kind) for kind in IMAGE_KINDS)
    return (
        f'<tr id="job-{_e(job.get("id"))}">'
        f'<td><div class="name">{_e(job.get("input_name"))}</div>{size}'
        f'<div class="muted">job {_e(job.get("id"))}</div></td>'
        f'<td><div class="thumbs">{figures}</div></td>'
        f'<td><div class="status {_e(status)}">{_e(status)}</div>{error}{flags}'
        f'<div class="muted">{_fmt_duration(job.get("duration_s"))}</div></td>'
        f"<td>{_reference_html(job)}</td>"
        f"<td>{_metrics_html(job.get('metrics'))}</td>"
        "</tr>"
    )


def _table(rows: list[str]) -> str:
    head = "<tr><th>Photo</th><th>Original · Restored · Reference</th><th>Status</th><th>Reference</th><th>Metrics</th></tr>"
    return f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _summary_html(summary: Mapping[str, Any]) -> str:
    counts = summary.get("counts") or {}
    cards = [
        f'<div class="card"><span class="muted">photos</span><b>{_fmt(summary.get("total", 0))}</b></div>'
    ]
    cards += [
        f'<div class="card {_e(status)}"><span class="muted">{_e(status)}</span><b>{_fmt(n)}</b></div>'
        for status, n in counts.items()
    ]
    cards.append(
        f'<div class="card flagged"><span class="muted">need review</span><b>{_fmt(summary.get("flagged", 0))}</b></div>'
    )
    timings = [
        ("wall time", _fmt_duration(summary.get("wall_s"))),
        ("mean per photo", _fmt_duration(summary.get("mean_job_s"))),
        ("p50 per photo", _fmt_duration(summary.get("p50_job_s"))),
        ("p95 per photo", _fmt_duration(summary.get("p95_job_s"))),
        ("photos / hour", _fmt(summary.get("photos_per_hour"))),
        ("photos / hour / worker", _fmt(summary.get("photos_per_hour_per_worker"))),
        ("s / megapixel", _fmt(summary.get("s_per_megapixel"))),
    ]
    timing_cards = "".join(
        f'<div class="card"><span class="muted">{_e(k)}</span><b>{v}</b></div>' for k, v in timings
    )
    errors = summary.get("error_codes") or {}
    error_list = ""
    if errors:
        items = ", ".join(f"<code>{_e(code)}</code> × {_fmt(n)}" for code, n in errors.items())
        error_list = f'<p class="muted">Errors: {items}</p>'
    return f'<div class="cards">{"".join(cards)}</div><div class="cards">{timing_cards}</div>{error_list}'


def _cancelled_note(batch: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """For a cancelled batch, what became of its photos: which ran before the cancel and which never did."""
    if batch.get("status") != "cancelled":
        return ""
    counts = summary.get("counts") or {}
    ran = ", ".join(f"{_fmt(counts.get(s, 0))} {s}" for s in ("succeeded", "failed"))
    return (
        f'<p class="cancelled">This batch was cancelled: {_fmt(counts.get("cancelled", 0))} photos were never '
        f"processed; {ran} before or while it was cancelled.</p>"
    )


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
    jobs = _jobs_of(report)
    flags = _flags_of(report)
    summary = report.get("summary") or summarize(report)
    batch = report.get("batch") or {}
    model = report.get("model") or {}
    thumbs = _Thumbnailer(images, thumb_px, jpeg_quality, max_image_bytes)

    # Flagged rows are built first so that they get the image budget first.
    flagged = [(job, flags[str(job.get("id"))]) for job in jobs if flags.get(str(job.get("id")))]
    flagged_rows = [_job_row(job, reasons, thumbs) for job, reasons in flagged]
    other_rows = [_job_row(job, [], thumbs) for job in jobs if not flags.get(str(job.get("id")))]
    omitted_note = ""
    if thumbs.omitted:
        omitted_note = (
            f'<p class="muted">{thumbs.omitted:,} previews were left out to keep this page a size a browser '
            "opens; report.json lists every photo.</p>"
        )

    title = f"pikfix report: {batch.get('name') or batch.get('id') or 'batch'}"
    sha = str(model.get("checkpoint_sha256") or "")
    header = (
        f"<h1>{_e(title)}</h1>"
        f'<div class="muted">batch <code>{_e(batch.get("id"))}</code> · status <b>{_e(batch.get("status"))}</b>'
        f" · created {_e(batch.get('created_at'))} · finished {_e(batch.get('finished_at') or '–')}</div>"
        f'<div class="muted">model <b>{_e(model.get("name"))}</b> · checkpoint '
        f'<code title="{_e(sha)}">{_e(sha[:12] or "–")}</code></div>'
    )
    header += _cancelled_note(batch, summary)
    if not jobs:
        body = '<p class="muted">No photos in this batch.</p>'
    else:
        review = (
            _table(flagged_rows)
            if flagged_rows
            else '<p class="muted">Nothing flagged: every finished photo passed the checks.</p>'
        )
        legend = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in _FLAG_HELP.items())
        body = (
            f'{omitted_note}<h2 id="review">Needs review ({len(flagged_rows)})</h2>'
            f'<details class="muted"><summary>What the flags mean</summary><ul>{legend}</ul></details>{review}'
            f'<h2 id="photos">Other photos ({len(other_rows)})</h2>'
            + (_table(other_rows) if other_rows else '<p class="muted">None.</p>')
        )
    # Shown a little smaller than stored: three previews and four columns fit a laptop screen, and the
    # extra pixels keep them sharp on high-density displays.
    shown = min(thumb_px, DISPLAY_PX)
    css = _CSS.replace("@PX@", str(shown)).replace("@PH@", str(max(48, shown * 3 // 4)))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No scripts, no network: only inline styles and data: images may load.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{css}</style></head><body>"
        f'<header>{header}</header><section id="summary">{_summary_html(summary)}</section>'
        f"<main>{body}</main></body></html>\n"
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
