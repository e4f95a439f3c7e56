"""The batch report: summary figures, review flags, and a safe self-contained HTML page."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from workers import report_stats
from workers.report import THUMB_PX, build_report, render_html, report_json, write_report
from workers.report_stats import (
    FLAG_COLOURFULNESS_OUTLIER,
    FLAG_FAILED,
    FLAG_LOW_REFERENCE_SCORE,
    FLAG_NO_REFERENCE,
    FLAG_OUT_OF_GAMUT,
    REFERENCE_SCORE_FLOOR,
    ReportError,
    flag_for_review,
    summarize,
)

BATCH = {
    "id": "b-1",
    "name": "Family album 1952",
    "status": "finished",
    "created_at": "2024-05-01T10:00:00+00:00",
    "finished_at": "2024-05-01T10:01:00+00:00",
}
MODEL = {"name": "pikfix-lite", "checkpoint_sha256": "ab" * 32}


def job(
    job_id: str,
    status: str = "succeeded",
    *,
    colourfulness: float | None = 30.0,
    total: float | None = 0.7,
    source: str | None = "retrieval",
    out_of_gamut: float = 0.001,
    duration: float | None = 2.0,
    name: str | None = None,
) -> dict:
    reference = None
    if source is not None:
        reference = {
            "id": f"r-{job_id}",
            "name": f"ref-{job_id}.jpg",
            "total": total,
            "texture": 0.8,
            "structure": 0.6,
            "source": source,
        }
    metrics = {
        "sharpness": 0.5,
        "noise_sigma": 0.01,
        "luminance_change": 0.02,
        "out_of_gamut_rate": out_of_gamut,
        "reference_score": total,
    }
    if colourfulness is not None:
        metrics["colourfulness"] = colourfulness
    return {
        "id": job_id,
        "input_name": name or f"{job_id}.jpg",
        "status": status,
        "error_code": "bad_input" if status == "failed" else None,
        "error_message": "not an image" if status == "failed" else None,
        "width": 1000,
        "height": 1000,
        "duration_s": duration,
        "output_key": f"t/out/{job_id}.png" if status == "succeeded" else None,
        "reference": reference,
        "candidates": [{"id": f"r-{job_id}", "name": f"ref-{job_id}.jpg", "rank": 1, "total": total}],
        "metrics": metrics if status == "succeeded" else {},
    }


def png_bytes(width: int, height: int, colour=(180, 120, 60), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def no_images(job: dict, kind: str) -> None:
    return None


class _Tags(HTMLParser):
    """Collects every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse_tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


# --------------------------------------------------------------------------- summary


def test_summary_counts_timings_and_throughput():
    jobs = [
        job("a", duration=1.0),
        job("b", duration=2.0),
        job("c", duration=3.0),
        job("d", "failed", duration=0.01),
        job("e", "queued", duration=None),
        job("f", "cancelled", duration=None),
    ]
    s = summarize({"batch": BATCH, "model": MODEL, "jobs": jobs})
    assert s["total"] == 6
    assert s["counts"] == {"queued": 1, "running": 0, "succeeded": 3, "failed": 1, "cancelled": 1, "awaiting_review": 0}
    assert s["wall_s"] == 60.0
    # The failed job's 10 ms is not a photo processed: statistics cover succeeded jobs only.
    assert s["mean_job_s"] == pytest.approx(2.0)
    assert s["p50_job_s"] == pytest.approx(2.0)
    assert s["p95_job_s"] == pytest.approx(2.9)
    assert s["max_job_s"] == 3.0
    assert s["photos_per_hour"] == pytest.approx(3 * 3600 / 60)
    assert s["photos_per_hour_per_worker"] == pytest.approx(1800.0)
    assert s["megapixels"] == pytest.approx(3.0)
    assert s["s_per_megapixel"] == pytest.approx(2.0)
    assert s["error_codes"] == {"bad_input": 1}
    assert s["flagged"] == 1 and s["flags_by_reason"][FLAG_FAILED] == 1


def test_summary_of_unfinished_and_empty_batches_has_no_made_up_figures():
    s = summarize({"batch": {**BATCH, "finished_at": None}, "jobs": [job("a")]})
    assert s["wall_s"] is None and s["photos_per_hour"] is None
    assert s["mean_job_s"] == 2.0

    empty = summarize({"batch": BATCH, "jobs": []})
    assert empty["total"] == 0 and sum(empty["counts"].values()) == 0
    assert empty["mean_job_s"] is None and empty["p95_job_s"] is None and empty["s_per_megapixel"] is None
    assert empty["photos_per_hour"] == 0.0 and empty["flagged"] == 0


def test_summary_mixes_naive_and_aware_timestamps_as_utc():
    batch = {**BATCH, "created_at": "2024-05-01T10:00:00", "finished_at": "2024-05-01T11:30:00Z"}
    assert summarize({"batch": batch, "jobs": []})["wall_s"] == 5400.0


def test_summary_rejects_a_report_without_a_job_list():
    with pytest.raises(ReportError):
        summarize({"batch": BATCH, "jobs": {"a": 1}})


def test_statistics_need_no_html():
    # The figures the page shows come from workers.report_stats on plain dicts: no rendering, no parsing.
    report = report_stats.build_report(BATCH, MODEL, outlier_batch())
    flagged, others = report_stats.split_for_review(report)
    assert [j["id"] for j, _ in flagged] == list(EXPECTED_FLAGS)  # batch order
    assert {j["id"]: reasons for j, reasons in flagged} == EXPECTED_FLAGS
    assert [j["id"] for j in others] == [f"n{i:02d}" for i in range(20)] + ["waiting", "stopped"]
    s = report["summary"]
    assert s["total"] == 30 and s["counts"]["succeeded"] == 27 and s["counts"]["failed"] == 1
    assert s["flagged"] == 8 and s["error_codes"] == {"bad_input": 1}
    assert build_report is report_stats.build_report  # workers.report's callers get the same figures


# --------------------------------------------------------------------------- flags


def outlier_batch(scale: float = 1.0) -> list[dict]:
    """20 ordinary photos plus one clear case of each reason, and unfinished jobs with wild metrics."""
    jobs = [job(f"n{i:02d}", colourfulness=(28 + i % 5) * scale, total=0.60 + 0.01 * i) for i in range(20)]
    jobs += [
        job("sepia", colourfulness=2.0 * scale, total=0.75),
        job("garish", colourfulness=140.0 * scale, total=0.74),
        job("weakref", total=0.40),  # above the floor, but the lowest decile of this batch
        job("floorref", colourfulness=31.0 * scale, total=0.20),
        job("gamut", colourfulness=29.0 * scale, out_of_gamut=0.10),
        job("fallback", colourfulness=30.0 * scale, total=None, source="fallback"),
        job("noref", colourfulness=30.0 * scale, source=None),
        job("broken", "failed", source=None),
        job("waiting", "queued", colourfulness=500.0, out_of_gamut=0.9, total=0.01),
        job("stopped", "cancelled", colourfulness=0.0, out_of_gamut=0.9, total=0.01),
    ]
    jobs[22]["metrics"]["colourfulness"] = 30.0 * scale  # weakref: ordinary colours
    return jobs


EXPECTED_FLAGS = {
    "sepia": [FLAG_COLOURFULNESS_OUTLIER],
    "garish": [FLAG_COLOURFULNESS_OUTLIER],
    "weakref": [FLAG_LOW_REFERENCE_SCORE],
    "floorref": [FLAG_LOW_REFERENCE_SCORE],
    "gamut": [FLAG_OUT_OF_GAMUT],
    "fallback": [FLAG_NO_REFERENCE],
    "noref": [FLAG_NO_REFERENCE],
    "broken": [FLAG_FAILED],
}


def test_flags_exactly_the_outliers():
    assert flag_for_review(outlier_batch()) == EXPECTED_FLAGS


def test_colourfulness_flags_do_not_depend_on_the_metric_scale():
    # The same batch with colourfulness on a 0-1 scale instead of 0-255 flags the same photos.
    assert flag_for_review(outlier_batch(scale=1 / 255)) == EXPECTED_FLAGS


def test_one_photo_can_carry_several_reasons_in_a_fixed_order():
    jobs = [job(f"n{i}", colourfulness=30.0 + i % 3) for i in range(12)]
    jobs.append(job("bad", colourfulness=200.0, total=0.1, out_of_gamut=0.5))
    assert flag_for_review(jobs) == {
        "bad": [FLAG_LOW_REFERENCE_SCORE, FLAG_COLOURFULNESS_OUTLIER, FLAG_OUT_OF_GAMUT]
    }


def test_small_batches_use_only_the_absolute_reference_floor():
    jobs = [
        job("a", total=0.9, colourfulness=5.0),
        job("b", total=0.8, colourfulness=90.0),
        job("c", total=0.5),
        job("d", total=REFERENCE_SCORE_FLOOR - 0.01),
    ]
    # Four photos: no decile and no median/MAD to judge colourfulness by.
    assert flag_for_review(jobs) == {"d": [FLAG_LOW_REFERENCE_SCORE]}


def test_a_uniform_batch_flags_nothing():
    assert flag_for_review([job(f"j{i}") for i in range(30)]) == {}


def test_near_identical_colourfulness_is_not_an_outlier():
    # MAD is ~0 here; tiny differences must not turn into huge z-scores.
    jobs = [job(f"j{i}", colourfulness=30.0) for i in range(10)] + [job("x", colourfulness=31.0)]
    assert flag_for_review(jobs) == {}


def test_missing_or_non_finite_metrics_are_ignored_not_fatal():
    jobs = [job(f"j{i}") for i in range(10)]
    jobs[0]["metrics"]["colourfulness"] = float("nan")
    jobs[1]["metrics"] = None
    jobs[2]["reference"]["total"] = None
    jobs[2]["metrics"]["reference_score"] = None
    assert flag_for_review(jobs) == {}


# --------------------------------------------------------------------------- report dict


def test_build_report_survives_a_json_round_trip():
    report = build_report(BATCH, MODEL, outlier_batch())
    assert set(report) == {"batch", "model", "jobs", "summary", "flags"}
    assert report["flags"] == EXPECTED_FLAGS
    assert report["summary"]["flagged"] == len(EXPECTED_FLAGS)
    assert report["summary"]["flags_by_reason"] == {
        FLAG_FAILED: 1,
        FLAG_NO_REFERENCE: 2,
        FLAG_LOW_REFERENCE_SCORE: 2,
        FLAG_COLOURFULNESS_OUTLIER: 2,
        FLAG_OUT_OF_GAMUT: 1,
    }
    loaded = json.loads(json.dumps(report))
    assert loaded == report
    assert render_html(loaded, no_images) == render_html(report, no_images)


def test_integer_job_ids_are_flagged_and_rendered():
    jobs = [job("x", "failed")]
    jobs[0]["id"] = 7
    report = build_report(BATCH, MODEL, jobs)
    assert report["flags"] == {"7": [FLAG_FAILED]}
    assert 'id="job-7"' in render_html(json.loads(json.dumps(report)), no_images)


# --------------------------------------------------------------------------- HTML


def test_html_escapes_hostile_strings_everywhere():
    evil = "<script>alert(1)</script>.jpg"
    j = job("e1", "failed", name=evil)
    j["error_message"] = '"><img src=x onerror=alert(2)>'
    j2 = job("e2", name="a\"b'c&d.jpg")
    j2["reference"]["name"] = "<b>ref</b>"
    j2["metrics"]["note"] = "<i>x</i>"
    page = render_html(build_report({**BATCH, "name": "<svg onload=alert(3)>"}, MODEL, [j, j2]), no_images)

    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in page
    assert "<script" not in page.lower()
    assert "&lt;svg onload=alert(3)&gt;" in page and "<svg" not in page
    assert "a&#34;b&#39;c&amp;d.jpg" in page  # markupsafe's spelling of html.escape's &quot; and &#x27;
    assert "&lt;b&gt;ref&lt;/b&gt;" in page and "&lt;i&gt;x&lt;/i&gt;" in page
    tags = parse_tags(page)
    assert {t for t, _ in tags}.isdisjoint({"script", "svg", "iframe", "object", "embed"})
    assert "<b>ref</b>" not in page and "<i>x</i>" not in page
    assert not [a for _, attrs in tags for a in attrs if a.startswith("on")]
    assert not [attrs for t, attrs in tags if t == "img"]  # no images given, so no <img> at all


def test_a_hostile_file_name_is_escaped_in_text_and_attributes():
    evil = "<script>alert(1)</script>.jpg"
    png = png_bytes(8, 6)
    page = render_html(build_report(BATCH, MODEL, [job("x", name=evil)]), lambda j, kind: png)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;.jpg"
    assert f'<div class="name">{escaped}</div>' in page  # the name cell
    assert page.count(f'alt="Original: {escaped}"') == 1  # and the <img alt> attributes
    assert evil not in page and "<script" not in page.lower()


def test_html_has_no_external_urls_and_forbids_scripts():
    images = {"original": png_bytes(40, 30), "restored": png_bytes(40, 30), "reference": png_bytes(30, 40)}
    page = render_html(build_report(BATCH, MODEL, [job("a"), job("b")]), lambda j, kind: images[kind])
    tags = parse_tags(page)
    urls = [
        v for _, attrs in tags for k, v in attrs.items() if k in {"src", "href", "srcset", "action", "data"}
    ]
    assert urls and all(v.startswith("data:") for v in urls)
    assert "http://" not in page and "https://" not in page and "url(" not in page
    csp = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]


def _thumbnails(page: str) -> list[Image.Image]:
    out = []
    for tag, attrs in parse_tags(page):
        if tag == "img":
            header, payload = attrs["src"].split(",", 1)
            assert header == "data:image/jpeg;base64"
            img = Image.open(io.BytesIO(base64.b64decode(payload)))
            img.load()
            assert (img.width, img.height) == (int(attrs["width"]), int(attrs["height"]))
            out.append(img)
    return out


def test_placeholders_for_missing_unreadable_and_unfetchable_images():
    stored = {"original": b"definitely not an image", "restored": png_bytes(64, 32), "reference": None}

    def images(j: dict, kind: str) -> bytes | None:
        if j["id"] == "down":
            raise ConnectionError("object store unreachable")
        return stored[kind]

    page = render_html(build_report(BATCH, MODEL, [job("ok"), job("down")]), images)
    assert page.count('class="ph"') == 5
    assert page.count(">unreadable image</div>") == 1
    assert page.count(">no reference image</div>") == 1
    assert page.count(">image unavailable</div>") == 3
    thumbs = _thumbnails(page)
    assert len(thumbs) == 1 and thumbs[0].size == (64, 32)  # small images are not enlarged


def test_thumbnails_are_small_whatever_the_scan_size():
    rng = np.random.default_rng(0)
    scan = Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8))
    buf = io.BytesIO()
    scan.save(buf, format="JPEG", quality=95)
    grey16 = io.BytesIO()
    Image.fromarray(np.full((600, 300), 40000, dtype=np.uint16)).save(grey16, format="PNG")
    data = {
        "original": grey16.getvalue(),
        "restored": buf.getvalue(),
        "reference": png_bytes(90, 60, mode="RGBA"),
    }

    page = render_html(build_report(BATCH, MODEL, [job("a")]), lambda j, kind: data[kind])
    original, restored, reference = _thumbnails(page)
    assert restored.size == (THUMB_PX, THUMB_PX * 3 // 4)
    assert original.size == (THUMB_PX // 2, THUMB_PX)
    assert abs(original.convert("L").getpixel((10, 10)) - round(40000 / 65535 * 255)) <= 2  # 16-bit scaled
    assert reference.size == (90, 60)
    assert len(buf.getvalue()) > 1_000_000 and len(page) < 120_000


def test_flagged_photos_come_first_then_the_rest():
    report = build_report(BATCH, MODEL, outlier_batch())
    page = render_html(report, no_images)
    assert "Needs review (8)" in page and "Other photos (22)" in page
    first_ordinary = page.index('id="job-n00"')
    for job_id in EXPECTED_FLAGS:
        assert page.index(f'id="job-{job_id}"') < first_ordinary
    assert page.index('id="review"') < page.index('id="job-broken"')
    for reason in {r for rs in EXPECTED_FLAGS.values() for r in rs}:
        assert f">{reason}</span>" in page


def test_metrics_and_summary_are_rounded_for_reading():
    j = job("a", colourfulness=31.234567)
    j["metrics"].update({"psnr": 123.456789, "ssim": 0.912345678, "lpips": float("nan")})
    page = render_html(build_report(BATCH, MODEL, [j]), no_images)
    assert "<dd>31.23</dd>" in page and "<dd>123.5</dd>" in page and "<dd>0.912</dd>" in page
    assert "<dt>lpips</dt><dd>–</dd>" in page
    assert "0.912345678" not in page and "31.234567" not in page
    assert "<b>60.00 s</b>" in page  # wall time of the batch


def test_zero_jobs_render_and_write(tmp_path):
    report = build_report(BATCH, MODEL, [])
    json_path, html_path = write_report(report, no_images, tmp_path / "out")
    page = html_path.read_text(encoding="utf-8")
    assert "No photos in this batch." in page and "<table" not in page
    assert json.loads(json_path.read_text(encoding="utf-8"))["summary"]["total"] == 0


def test_write_report_writes_strict_json_and_the_rendered_page(tmp_path):
    j = job("a")
    j["metrics"]["psnr"] = float("inf")
    report = build_report(BATCH, MODEL, [j, job("b", "failed", name="Großmutter 1931.tif")])
    json_path, html_path = write_report(report, no_images, tmp_path)
    assert json_path.read_text(encoding="utf-8") == report_json(report)
    assert '"Großmutter 1931.tif"' in report_json(report)
    assert (json_path.name, html_path.name) == ("report.json", "report.html")
    loaded = json.loads(json_path.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(c))
    assert loaded["jobs"][0]["metrics"]["psnr"] is None
    assert loaded["flags"] == {"b": [FLAG_FAILED]}
    assert html_path.read_text(encoding="utf-8") == render_html(report, no_images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]  # no temp files left
    assert math.isinf(report["jobs"][0]["metrics"]["psnr"])  # the caller's dict is left as it was


def test_image_budget_keeps_previews_for_flagged_photos_first():
    jobs = [job(f"j{i}") for i in range(5)] + [job("late-failure", "failed")]
    same = png_bytes(64, 48)
    one_img = render_html(
        build_report(BATCH, MODEL, [job("x")]), lambda j, kind: same if kind == "restored" else None
    )
    src_len = len(next(a["src"] for t, a in parse_tags(one_img) if t == "img"))

    page = render_html(
        build_report(BATCH, MODEL, jobs), lambda j, kind: same, max_image_bytes=4 * src_len + 1
    )
    assert len(_thumbnails(page)) == 4
    assert page.count(">preview omitted: report size limit</div>") == 6 * 3 - 4
    assert "14 previews were left out" in page
    failed_row = page[
        page.index('id="job-late-failure"') : page.index("</tr>", page.index('id="job-late-failure"'))
    ]
    assert failed_row.count("<img ") == 3


def test_a_cancelled_batch_says_what_ran_and_what_never_did():
    jobs = [job("a"), job("b"), job("c", status="failed"), job("d", status="cancelled"), job("e", status="cancelled")]
    page = render_html(build_report({**BATCH, "status": "cancelled"}, MODEL, jobs), no_images)
    assert "This batch was cancelled: 2 photos were never processed; 2 succeeded, 1 failed" in page
    for name in ("d.jpg", "e.jpg"):  # the cancelled photos are listed, with their status
        assert name in page
    finished = render_html(build_report(BATCH, MODEL, jobs[:3]), no_images)
    assert "was cancelled" not in finished
