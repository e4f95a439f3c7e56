"""A batch's IIIF manifest opened in Mirador (from the npm registry) in headless Chromium.

The API runs under uvicorn on loopback; Mirador's page is served from another loopback port, so the
manifest is fetched cross-origin exactly as a viewer hosted elsewhere fetches it, and the images are
loaded through the link tokens in the manifest (the browser has no API key). Chromium resolves no other
host. The test waits until the restored image has loaded and the screenshot shows its colours.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fixtures.iiif import mirador_bundle, serve_mirador
from fixtures.processes import free_port, wait_for_port
from PIL import Image

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
RENDER_TIMEOUT_S = 45


def blocks_png(width: int = 320, height: int = 240) -> bytes:
    """Large flat blocks of light and dark: the restored image keeps them, in colours of its own."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.where(((x // 80) + (y // 80)) % 2 == 0, 220, 40).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def served_api(api) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def colour_reference() -> bytes:
    """Orange above teal: what the grey photos are colourized from."""
    pixels = np.zeros((120, 160, 3), dtype=np.uint8)
    pixels[:60] = (235, 120, 20)
    pixels[60:] = (20, 120, 130)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, "PNG")
    return out.getvalue()


def restored_batch(api) -> tuple[str, bytes]:
    """A batch of three grey photos colourized from one reference; returns its id and the first photo's
    restored image."""
    ref = api.client.post("/v1/references", headers=api.a, files={"files": ("ref.png", colour_reference(), "image/png")})
    assert ref.status_code == 202, ref.text
    options = {"reference_mode": "manual", "reference_id": ref.json()["references"][0]["id"]}
    batch = api.client.post("/v1/batches", headers=api.a, json={"name": "Mirador album", "options": options}).json()
    files = [("files", (f"photo-{i}.png", blocks_png(320 - 16 * i), "image/png")) for i in range(3)]
    r = api.client.post(f"/v1/batches/{batch['id']}/photos", headers=api.a, files=files)
    assert r.status_code == 201, r.text
    first = r.json()["jobs"][0]
    assert first["status"] == "succeeded"
    result = api.client.get(f"/v1/jobs/{first['id']}/result", headers=api.a)
    return batch["id"], result.content


def main_colours(image: bytes, n: int = 2) -> np.ndarray:
    """The restored image's ``n`` most common colours (its blocks'), as RGB rows."""
    rgb = np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    return colours[np.argsort(counts)[::-1][:n]].astype(int)


def matching_pixels(screenshot: bytes, colour: np.ndarray, tolerance: int = 6) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)
    return int((np.abs(rgb - colour).max(axis=2) <= tolerance).sum())


def test_mirador_shows_the_restored_canvas(api, served_api, browser, tmp_path):
    mirador_bundle()  # the first run installs it from npm (minutes); then it is cached
    batch_id, restored = restored_batch(api)
    manifest = api.client.get(f"/v1/batches/{batch_id}/iiif/manifest", headers=api.a).json()
    manifest_url = manifest["id"].replace(str(api.client.base_url), served_api)
    colours = main_colours(restored)
    # Colours, not greys: nothing in Mirador's own grey and white frame can pass for them.
    assert all(c.max() - c.min() >= 20 for c in colours), colours.tolist()
    with serve_mirador(manifest_url) as page:
        browser.get(page)
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        counts = [0] * len(colours)
        while time.monotonic() < deadline:
            shot = browser.get_screenshot_as_png()
            counts = [matching_pixels(shot, c) for c in colours]
            if min(counts) >= 2000:
                break
            time.sleep(0.5)
        (tmp_path / "mirador.png").write_bytes(shot)  # kept by pytest for a look after a failure
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        text = browser.execute_script("return document.body.innerText")
        logs = browser.get_log("browser")
    assert any("/restored?token=" in url for url in loaded), loaded
    assert min(counts) >= 2000, (colours.tolist(), counts, str(tmp_path / "mirador.png"), logs)
    # The manifest's label and the canvas's (the photo's name) are what Mirador shows around it.
    assert "Mirador album" in text and "1 of 3" in text and "photo-0.png" in text, text
