"""End to end: the real Streamlit server on 127.0.0.1, driven in headless Chromium.

Uploads a sample image through the page's file input, waits for the prediction
and the Grad-CAM overlay, checks the page shows no error or traceback and the
browser logged no errors, and keeps a screenshot in
``build/test-artifacts/app_upload.png``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import CHROMIUM, free_port, launch_chromium, wait_for

from histo_common import DISCLAIMER

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "build" / "test-artifacts"
TIMEOUT_MS = 90_000  # the server loads TensorFlow and the model on the first upload


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def app_server(tiny_model, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``streamlit run`` on a free 127.0.0.1 port, pointed at the tiny model.

    Yields its URL and the path of the server's log.
    """
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs Debian's chromium)")
    port = free_port()
    env = {
        **os.environ,
        "HISTO_MODEL_URI": tiny_model.root_uri,
        "HISTO_SAMPLES_URI": str(tiny_model.sample_dir),
        "HISTO_RESULTS_URI": str(tmp_path / "results"),
    }
    log_path = tmp_path / "streamlit.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app/streamlit_app.py",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(port),
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for(lambda: _healthy(url) or server.poll() is not None, timeout=60):
            pytest.fail(f"streamlit did not answer on {url}:\n{log_path.read_text()}")
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log_path.read_text()}")
        yield url, log_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_upload_shows_prediction_and_overlay_in_chromium(
    app_server: tuple[str, Path], sample_dir: Path
) -> None:
    from playwright.sync_api import sync_playwright

    url, server_log = app_server
    image = sorted((sample_dir / "malignant").glob("*.png"))[0]
    browser_errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "app_upload.png"

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on(
                "console",
                lambda message: (
                    browser_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: browser_errors.append(str(error)))
            page.goto(url)
            page.get_by_text(DISCLAIMER).first.wait_for(timeout=TIMEOUT_MS)

            page.locator("input[type=file]").first.set_input_files(str(image))

            prediction = page.get_by_text("Prediction:").first
            prediction.wait_for(timeout=TIMEOUT_MS)
            page.get_by_text("Grad-CAM overlay for the malignant class").wait_for(
                timeout=TIMEOUT_MS
            )
            images = page.locator("[data-testid=stImage] img")
            assert wait_for(lambda: images.count() >= 2, timeout=30)
            sizes = images.evaluate_all("els => els.map(e => [e.complete, e.naturalWidth])")
            page.wait_for_timeout(500)  # let the last render settle before the screenshot
            page.screenshot(path=str(screenshot), full_page=True)
            prediction_text = prediction.inner_text()
            exceptions = page.locator("[data-testid=stException]").count()
            page_text = page.inner_text("body")
        finally:
            browser.close()

    assert "threshold 0.500" in prediction_text
    assert image.name in page_text
    assert all(complete and width >= 256 for complete, width in sizes), sizes
    assert exceptions == 0
    assert "Traceback" not in page_text
    assert "This page could not be shown" not in page_text
    assert browser_errors == []
    assert "Traceback" not in server_log.read_text(errors="replace")
    assert screenshot.stat().st_size > 10_000
