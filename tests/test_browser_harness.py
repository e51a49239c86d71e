"""The browser harness itself: a clean page passes, and a broken page's errors are caught."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.browser import open_browser, serve, visit

INDEX_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>ok</title><link rel="icon" href="data:,"></head>
<body><div id="chart"></div><script src="script.js"></script></body>
</html>
"""

# Draws the rects from JS, so counting them proves the script really ran in the browser.
SCRIPT_JS = """
const ns = "http://www.w3.org/2000/svg";
const svg = document.createElementNS(ns, "svg");
svg.setAttribute("width", "300");
svg.setAttribute("height", "100");
for (let i = 0; i < 3; i++) {
  const rect = document.createElementNS(ns, "rect");
  rect.setAttribute("x", String(10 + i * 100));
  rect.setAttribute("y", "10");
  rect.setAttribute("width", "80");
  rect.setAttribute("height", "80");
  rect.setAttribute("fill", "steelblue");
  svg.appendChild(rect);
}
document.getElementById("chart").appendChild(svg);
"""

BAD_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>bad</title><link rel="icon" href="data:,"></head>
<body>
<img src="missing.png" alt="">
<script>throw new Error("boom from bad.html");</script>
</body>
</html>
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium shared by this module's tests."""
    with open_browser() as launched:
        yield launched


@pytest.fixture
def site_url(tmp_path: Path) -> Iterator[str]:
    """The tiny static site written into tmp_path/site and served over HTTP."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(INDEX_HTML)
    (site / "script.js").write_text(SCRIPT_JS)
    (site / "bad.html").write_text(BAD_HTML)
    with serve(site) as base_url:
        yield base_url


def test_clean_page_renders_svg_and_screenshot(browser: Browser, site_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "index.png"
    index = visit(browser, site_url + "index.html", screenshot=shot)
    index.assert_clean()
    assert index.page.locator("#chart svg rect").count() == 3
    assert shot.stat().st_size > 0
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_broken_page_reports_page_error_and_404(browser: Browser, site_url: str) -> None:
    bad = visit(browser, site_url + "bad.html", screenshot=None)
    assert any(p.startswith("page error:") and "boom from bad.html" in p for p in bad.problems), bad.problems
    assert f"HTTP 404: {site_url}missing.png" in bad.problems, bad.problems
    with pytest.raises(AssertionError, match="boom from bad.html"):
        bad.assert_clean()
