"""report.html in a real headless Chromium: it loads, every thumbnail decodes, and the console stays clean.

Driven through Selenium and the distribution's chromedriver (Debian packages ``chromium`` and
``chromium-driver``); nothing is downloaded. Skipped only where Chromium is not installed.
"""

from __future__ import annotations

import functools
import io
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.report import build_report, write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
EVIL_NAME = "<script>alert(1)</script>.jpg"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (Debian package chromium)"
    ),
]

# Every image <img> the page must show: 3 thumbnails for each photo whose images exist.
JOBS_WITH_IMAGES = ("gradient", "grey16", "transparent")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _images() -> dict[str, dict[str, bytes | None]]:
    yy, xx = np.mgrid[0:300, 0:400]
    gradient = np.stack([xx * 255 // 399, yy * 255 // 299, (xx + yy) * 255 // 698], axis=-1).astype(np.uint8)
    grey = Image.fromarray(gradient).convert("L")
    grey16 = Image.fromarray((np.asarray(grey, dtype=np.uint16) * 257).astype(np.uint16))
    return {
        "gradient": {
            "original": _encode(grey, "PNG"),
            "restored": _encode(Image.fromarray(gradient), "JPEG"),
            "reference": _encode(Image.fromarray(gradient[::-1]), "WEBP"),
        },
        "grey16": {
            "original": _encode(grey16, "PNG"),
            "restored": _encode(Image.fromarray(gradient), "TIFF"),
            "reference": _encode(Image.fromarray(gradient).convert("P"), "GIF"),
        },
        "transparent": {
            "original": _encode(grey.convert("LA"), "PNG"),
            "restored": _encode(Image.fromarray(gradient).convert("RGBA"), "PNG"),
            "reference": _encode(Image.fromarray(gradient), "BMP"),
        },
        "missing": {"original": None, "restored": None, "reference": None},
        "corrupt": {"original": b"GIF89a but not really", "restored": None, "reference": None},
    }


def _job(job_id: str, name: str, status: str = "succeeded", out_of_gamut: float = 0.001) -> dict:
    return {
        "id": job_id,
        "input_name": name,
        "status": status,
        "error_code": "undecodable" if status == "failed" else None,
        "error_message": "cannot identify image file" if status == "failed" else None,
        "width": 400,
        "height": 300,
        "duration_s": 1.5,
        "output_key": None,
        "reference": {
            "id": "r1",
            "name": "ref <1>.jpg",
            "total": 0.72,
            "texture": 0.8,
            "structure": 0.6,
            "source": "retrieval",
        },
        "candidates": [{"id": "r1", "name": "ref <1>.jpg", "rank": 1, "total": 0.72}],
        "metrics": {}
        if status == "failed"
        else {
            "colourfulness": 30.0,
            "sharpness": 0.4,
            "noise_sigma": 0.02,
            "luminance_change": 0.01,
            "out_of_gamut_rate": out_of_gamut,
            "reference_score": 0.72,
        },
    }


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    images = _images()
    jobs = [
        _job("gradient", EVIL_NAME),
        _job("grey16", "scan 16-bit.png"),
        _job("transparent", "alpha & co.png", out_of_gamut=0.2),
        _job("missing", "lost.jpg"),
        _job("corrupt", "corrupt.gif", status="failed"),
    ]
    report = build_report(
        {
            "id": "b1",
            "name": "Browser check",
            "status": "finished",
            "created_at": "2024-05-01T10:00:00Z",
            "finished_at": "2024-05-01T10:02:00Z",
        },
        {"name": "pikfix-lite", "checkpoint_sha256": "0" * 64},
        jobs,
    )
    out = tmp_path_factory.mktemp("report")
    write_report(report, lambda job, kind: images[job["id"]][kind], out)
    return out


@pytest.fixture(scope="module")
def http_url(report_dir: Path) -> Iterator[str]:
    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(report_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/report.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps Selenium Manager (which would download drivers) out of the picture.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


_IMAGES_STATE = """
return Array.from(document.images).map(img => ({
  alt: img.alt, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
  shownW: img.getBoundingClientRect().width}));
"""


@pytest.mark.parametrize("via", ["http", "file"])
def test_report_renders_cleanly_in_chromium(browser, report_dir, http_url, via):
    url = http_url if via == "http" else (report_dir / "report.html").as_uri()
    browser.get_log("browser")  # drop anything left from an earlier page
    browser.get(url)

    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title == "pikfix report: Browser check"

    images = browser.execute_script(_IMAGES_STATE)
    assert len(images) == 3 * len(JOBS_WITH_IMAGES)
    not_rendered = [img for img in images if not (img["complete"] and img["w"] > 0 and img["h"] > 0)]
    assert not_rendered == []
    assert all(0 < max(img["w"], img["h"]) <= 256 and img["shownW"] > 0 for img in images)

    # Missing and undecodable images are visible placeholders, not broken <img> icons.
    placeholders = browser.execute_script(
        "return Array.from(document.querySelectorAll('.ph')).map(e => e.textContent)"
    )
    assert sorted(placeholders) == sorted(
        ["no original image"] + ["no restored image"] * 2 + ["no reference image"] * 2 + ["unreadable image"]
    )

    # The hostile file name is shown as text, and nothing on the page can run script.
    assert browser.execute_script("return document.scripts.length") == 0
    names = browser.execute_script(
        "return Array.from(document.querySelectorAll('.name')).map(e => e.textContent)"
    )
    assert EVIL_NAME in names

    # Flagged photos (out of gamut, failed) come first, in batch order, then the rest.
    row_ids = browser.execute_script("return Array.from(document.querySelectorAll('tr[id]')).map(r => r.id)")
    assert row_ids == ["job-transparent", "job-corrupt", "job-gradient", "job-grey16", "job-missing"]

    # Nothing fetched from anywhere: data: URIs only, and a clean console.
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []
