"""Helpers for the browser tests: Debian's Chromium driven by Playwright, and the app served on
a free local port. Chromium comes from scripts/system-deps.sh (Debian's `chromium` package);
Playwright never downloads a browser of its own here."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.support.helpers import Api

CHROMIUM = os.environ.get("KINWIRE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
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


# libfaketime's variables (tests/integration/test_wall_clock.py moves the test process's clock with
# them)
# are kept from the browser: Chromium under libfaketime takes a minute to draw a page, and its
# pages get the server's clock from tests/support/clock.py browser_clock instead.
FAKETIME_VARS = ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC")


async def launch(pw, *extra_args: str, executable: str | None = None):
    """Debian's headless Chromium through a started Playwright. `executable`: a wrapper that
    runs it elsewhere (tests/support/impaired_link.py's `wrapper`: in the family's network
    namespace)."""
    env = {k: v for k, v in os.environ.items() if k not in FAKETIME_VARS}
    return await pw.chromium.launch(executable_path=executable or CHROMIUM, headless=True,
                                    args=[*ARGS, *extra_args], env=env)


@asynccontextmanager
async def chromium() -> AsyncIterator[object]:
    """A headless Debian Chromium, closed on the way out."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await launch(pw)
        try:
            yield browser
        finally:
            await browser.close()


async def shot(page, name: str, full_page: bool = True) -> Path:
    """Save a screenshot of the page as a documentation artifact (docs/screenshots/); the
    viewport only (`full_page=False`) for a modal dialog, whose backdrop covers only that."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def loaded(page, img) -> int:
    """Wait until the <img> has really loaded (an image that failed has naturalWidth 0);
    its natural width. Visible is not loaded: a thread drawn again by a push makes a new <img>,
    which is on screen before its bytes are."""
    handle = await img.element_handle()
    await page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=handle,
                                 timeout=10_000)
    return await handle.evaluate("i => i.naturalWidth")


async def seed_kiosk(api: Api, pin: str) -> dict[str, str]:
    """A facility with one person (Dana Rivers, signing in with `pin`) and one registered
    kiosk, made through the API: the facility id, the inmate number, the device token."""
    admin = await api.admin()
    facility_id = await api.facility(admin)
    staff = await api.staff(admin, facility_id)
    number, device = await api.kiosk_person(staff, facility_id, pin, "Dana Rivers")
    return {"facility_id": facility_id, "number": number, "device": device}


# What a page had loaded, when its first start did not finish: a load failure of the suite's
# (a page not `data-ready` in 10-30 s, several times a full run) not yet explained.
_LOADED = """() => JSON.stringify({state: document.readyState, ready: document.body.dataset.ready,
    loaded: performance.getEntriesByType("resource").map(
        e => [e.name.replace(location.origin, ""), Math.round(e.startTime),
              Math.round(e.duration)])})"""


async def until_ready(page, state: str) -> None:
    """Wait for the page's `data-ready` to read `state` (the test's expect timeout); on a
    timeout, say what the page had loaded and when, as well as the timeout."""
    from playwright.async_api import expect

    try:
        await expect(page.locator("body")).to_have_attribute("data-ready", state)
    except AssertionError as exc:
        try:
            loaded = await asyncio.wait_for(page.evaluate(_LOADED), 5)
        except Exception as why:  # the page's own thread may be what is stuck
            loaded = f"(could not ask the page: {why!r})"
        raise AssertionError(f"{exc}\nthe page at {page.url}: {loaded}") from None


async def kiosk_sign_in(kiosk, base: str, seed: dict, pin: str,
                        shot_as: str | None = None) -> None:
    """Register the kiosk page with the seed's device token, sign the person in, and wait
    for its socket; `shot_as` saves the filled form before signing in."""
    from playwright.async_api import expect

    await kiosk.goto(base + "/static/kiosk.html")
    await until_ready(kiosk, "signed-out")
    await kiosk.get_by_label("Facility id").fill(seed["facility_id"])
    await kiosk.get_by_label("Device token").fill(seed["device"])
    await kiosk.get_by_role("button", name="Save on this device").click()
    await kiosk.get_by_label("Inmate number").fill(seed["number"])
    await kiosk.get_by_label("PIN").fill(pin)
    if shot_as:
        await shot(kiosk, shot_as)
    await kiosk.get_by_role("button", name="Sign in").click()
    await expect(kiosk.locator("html")).to_have_attribute("data-socket", "online")


async def fill_card(page, number: str = "4242 4242 4242 4242") -> None:
    """A test card on the sandbox processor's page (/sandbox-pay/, docs/payments.md): the
    family app's own pages have no card field since the hosted checkout."""
    from playwright.async_api import expect

    await expect(page.locator("#pay-form")).to_be_visible()
    await page.get_by_label("Card number").fill(number)
    await page.get_by_label("Month").fill("12")
    await page.get_by_label("Year").fill("2031")
    await page.get_by_label("Security code").fill("123")
    await page.get_by_label("Name on the card").fill("Test Family")


async def buy_credits(page, credits: int) -> None:
    """Buy `credits` in the family app's "Buy credits" tab: on to the processor's page, the
    test card there, and back to the app with the credits added."""
    from playwright.async_api import expect

    await page.get_by_role("tab", name="Buy credits").click()
    await page.get_by_label("Credits", exact=True).select_option(str(credits))
    await page.get_by_role("button", name=re.compile(r"^Continue to pay")).click()
    await page.wait_for_url(re.compile(r"/sandbox-pay/"))
    await fill_card(page)
    await page.get_by_role("button", name=re.compile(r"^Pay \$")).click()
    await expect(page.locator("#buy-notice")).to_contain_text("credits added")
    await expect(page.locator("html")).to_have_attribute("data-socket", "online")
