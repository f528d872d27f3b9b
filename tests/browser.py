"""Helpers for the browser tests: Debian's Chromium driven by Playwright, and the app served on
a free local port. Chromium comes from scripts/system-deps.sh (Debian's `chromium` package);
Playwright never downloads a browser of its own here."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("KINWIRE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
PHONE = {"width": 390, "height": 844}
KIOSK = {"width": 1024, "height": 768}


def require_chromium() -> None:
    """Fail (not skip) when the browser is missing: the suite's set-up installs it."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/system-deps.sh (it installs "
                    "Debian's chromium package) or set KINWIRE_CHROMIUM", pytrace=False)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'", pytrace=False)


@asynccontextmanager
async def chromium() -> AsyncIterator[object]:
    """A headless Debian Chromium, closed on the way out."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def shot(page, name: str) -> Path:
    """Save a screenshot of the page as a documentation artifact (docs/screenshots/)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
