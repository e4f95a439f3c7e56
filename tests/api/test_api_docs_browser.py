"""``/docs`` in a real headless Chromium that cannot reach any host but the API: Swagger UI renders.

The API is served by uvicorn on loopback; Chromium resolves every other host name to nothing, as on an
offline machine, so a page that still loads its script or style from a CDN shows a blank page here.
Driven through Selenium and the distribution's chromedriver (Debian packages ``chromium`` and
``chromium-driver``, which CI installs); nothing is downloaded.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fixtures.processes import free_port, wait_for_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")


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
def offline_browser(tmp_path):
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
        # Offline: no host name resolves except the loopback address the API listens on.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_swagger_ui_renders_every_operation_offline(served_api, offline_browser):
    offline_browser.get(f"{served_api}/docs")
    deadline = time.monotonic() + 30
    operations = 0
    while time.monotonic() < deadline:
        operations = offline_browser.execute_script("return document.querySelectorAll('.opblock').length")
        if operations:
            break
        time.sleep(0.2)
    title = offline_browser.execute_script(
        "const t = document.querySelector('.swagger-ui .info .title'); return t ? t.textContent : ''")
    assert "pikfix" in title
    assert operations >= 18
    loaded = offline_browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(served_api) for url in loaded), loaded
    errors = [e for e in offline_browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
