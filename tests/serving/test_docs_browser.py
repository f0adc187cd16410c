"""/docs in a real browser (Debian's chromium driven by Playwright): readable with no network."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

pytestmark = [pytest.mark.service, pytest.mark.browser]

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def test_docs_page_renders_offline_with_every_endpoint_and_error(server, tmp_path):
    from playwright.sync_api import sync_playwright

    if shutil.which("chromium") is None:
        pytest.fail("chromium not installed: run `make setup` (scripts/setup.sh installs it)")
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{server.url}/docs", wait_until="load", timeout=30_000)
            assert page.title() == "aq-forecast online forecasts"
            headings = page.locator("h2").all_inner_texts()
            for endpoint in ("GET /v1/locations", "GET /v1/forecasts/{location_id}",
                             "POST /v1/forecasts", "GET /healthz", "GET /readyz"):
                assert any(" ".join(h.split()) == endpoint for h in headings), endpoint
            # the request body's fields, with their ranges, as a reader sees them
            humidity = page.locator("#schema-Observation tr", has_text="relative_humidity_2m")
            assert "100" in humidity.inner_text()
            assert page.locator("#errors").is_visible()
            # the example request is the served state's newest hour, with this server's URL
            batch = pd.read_parquet(server.project.paths.latest_predictions)
            newest = batch.loc[batch["location_id"] == "berlin", "issue_time"].max()
            example = page.locator("#examples + pre").inner_text()
            assert f'"time": "{newest:%Y-%m-%dT%H:%M:%S}Z"' in example, example
            assert f"curl -s -X POST {server.url}/v1/forecasts" in example
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
            assert (tmp_path / "docs.png").stat().st_size > 10_000
            assert page.locator("tr#invalid-request").inner_text().startswith("/docs#invalid")
            # a problem's type link lands on its explanation
            page.goto(f"{server.url}/docs#unknown-location", timeout=30_000)
            assert page.locator("tr#unknown-location").is_visible()
            link = page.locator("a[href='/openapi.json']")
            assert link.count() == 1
        finally:
            browser.close()
    assert requested
    assert all(url.startswith(server.url) for url in requested), requested
