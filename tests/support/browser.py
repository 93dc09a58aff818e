"""Headless Chromium for the browser tests, driven by playwright's Python package.

Playwright drives the system's Chromium (``executable_path``): its own browser builds are a
download (``playwright install``) that this machine's closed network cannot make. Without the
background-networking flags Chromium keeps trying to reach Google's services, and on this network
those connections are refused, which slows or breaks page loads.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers have a small /dev/shm
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def chromium_page(timeout_ms: float = 30_000) -> Iterator[Page]:
    """One page of a fresh headless Chromium; the test is skipped, saying why, when Chromium or
    playwright is not installed. ``timeout_ms`` is the default for every wait and action."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is a test extra (pip install -e .[test])"
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()
