"""Browser-test helpers: serve a static folder and check its pages in a real headless Chromium.

Playwright drives the system `chromium` binary (Debian's package), so no browser download is needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright

# Flags that let Chromium run headless as root inside a container, without GPU or background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 5.0


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` with `python -m http.server` on a free loopback port; yield its base URL.

    A real HTTP server (not file://) so pages load scripts and report 404s as a browser would see them.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder), str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_answering(server, base_url)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_answering(server: subprocess.Popen[bytes], url: str) -> None:
    """Poll `url` until the server answers; fail if it exits or stays silent too long."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"http.server for {url} exited early with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"http.server did not answer at {url} within {SERVER_START_TIMEOUT_S:.0f} s"
                ) from None
            time.sleep(0.05)


@contextmanager
def open_browser() -> Iterator[Browser]:
    """Launch the system Chromium headless through Playwright; yield the Browser and close it afterwards.

    Without `chromium` on PATH the test is skipped, unless CI is set: then it fails, so CI never silently skips.
    """
    executable = shutil.which("chromium")
    if executable is None:
        if "CI" in os.environ:
            pytest.fail("CI is set but `chromium` is not on PATH: install it (apt-get install chromium)", pytrace=False)
        pytest.skip("`chromium` is not on PATH (apt-get install chromium); with CI set this is a failure")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageVisit:
    """An open page after loading `url`, with every problem the browser reported while loading it."""

    url: str
    page: Page
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """Fail listing every page error, console error, failed request and HTTP >= 400 response."""
        assert not self.problems, f"{len(self.problems)} browser problem(s) on {self.url}:\n" + "\n".join(
            f"  - {problem}" for problem in self.problems
        )


def visit(browser: Browser, url: str, screenshot: Path | None = None) -> PageVisit:
    """Open `url` in a fresh 1280x900 page, wait for network idle, optionally save a full-page PNG.

    Listeners are attached before navigation so errors raised while the page loads are recorded too.
    """
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    result = PageVisit(url=url, page=page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            result.problems.append(f"console error: {message.text}")

    def on_request_failed(request: Request) -> None:
        result.problems.append(f"request failed: {request.url} ({request.failure})")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            result.problems.append(f"HTTP {response.status}: {response.url}")

    page.on("pageerror", lambda error: result.problems.append(f"page error: {error}"))
    page.on("console", on_console)
    page.on("requestfailed", on_request_failed)
    page.on("response", on_response)
    page.goto(url, wait_until="networkidle")
    if screenshot is not None:
        page.screenshot(path=screenshot, full_page=True)
    return result
