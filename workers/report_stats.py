"""The batch report's figures: counts, timings, throughput and the photos flagged for review.

Kept apart from the HTML page (:mod:`workers.report`) so that what is counted and flagged can be tested
on plain dicts, without rendering or parsing a page. The report dict is plain JSON (job ids, ISO
timestamps), so the figures come out the same from a fresh :func:`build_report` result and from a
``report.json`` read back from disk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "awaiting_review")

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


def review_reasons(job: dict) -> list[str]:
    """Why one finished job would be flagged on its own figures (the review gate's ``flagged`` mode, judged
    as the job finishes, before the rest of its batch exists): the batch-relative flags (lowest decile,
    colourfulness outlier) need company and stay the report's. A restore-only job (``colourize`` false)
    has no reference by design, so that is no reason."""
    reasons = flag_for_review([job]).get(job["id"], [])
    if job.get("colourize") is False:
        reasons = [r for r in reasons if r != FLAG_NO_REFERENCE]
    return reasons


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


def split_for_review(report: Mapping[str, Any]) -> tuple[list[tuple[dict, list[str]]], list[dict]]:
    """The flagged jobs with their reasons, then every other job, both in batch order.

    This is the page's order: flagged photos are listed (and given the preview budget) first.
    """
    flags = _flags_of(report)
    jobs = _jobs_of(report)
    flagged = [(job, flags[str(job.get("id"))]) for job in jobs if flags.get(str(job.get("id")))]
    return flagged, [job for job in jobs if not flags.get(str(job.get("id")))]
