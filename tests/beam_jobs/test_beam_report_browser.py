"""The evaluation report opened in headless Chromium: no console errors, every plot loads."""

from __future__ import annotations

import pytest
from support import launch_chromium

from histo_common import DISCLAIMER


@pytest.mark.browser
def test_report_opens_cleanly_in_chromium(evaluated_run) -> None:
    from playwright.sync_api import sync_playwright

    report = evaluated_run.output / "report.html"
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page()
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])"
            )
            disclaimer_visible = page.get_by_text(DISCLAIMER).first.is_visible()
            title = page.title()
        finally:
            browser.close()
    assert problems == []
    assert len(images) >= 5 + 1  # five plots and at least one gallery image
    broken = [alt for alt, complete, width in images if not complete or width <= 0]
    assert broken == []
    assert disclaimer_visible
    assert title.startswith("histoscreen evaluation: histo-cnn version 1")
    # Self-contained: nothing but the page itself (and data: URIs) was requested.
    assert [u for u in requests if not u.startswith(("data:", report.as_uri()))] == []
