"""A frozen kiosk camera in Chromium (issue 14, item 3): the family and the kiosk in a visit,
real peer connection through a private coturn; the kiosk's camera and microphone tracks are
stopped (a device that died). The kiosk page sees its outbound packet counts stop in
getStats() and reports `sending: false` after the threshold; the meter pauses, both screens
say why, and no minute is billed while frozen. New tracks (the device back): billing resumes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.browser.test_browser_endings import PASSWORD, _book_now, _join_both, _minutes, _pages
from tests.conftest import fresh_sqlite, test_settings
from tests.support.browser import buy_credits, kiosk_sign_in, launch, require_chromium
from tests.support.clock import scene_clock
from tests.support.helpers import Api
from tests.support.pages import log_in
from tests.support.turn_server import private_coturn
from tests.support.visit_pages import MEDIA, MINUTE_S, PIN, visit_parties

STALL_S = 2.0
CREDITS = 1000
STOP = "() => window.kinwireVisit.local.getTracks().forEach(t => t.stop())"
BACK = """async () => {
  const fresh = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
  for (const sender of window.kinwireVisit.pc.getSenders()) {
    const track = fresh.getTracks().find(t => sender.track && t.kind === sender.track.kind);
    if (track) await sender.replaceTrack(track);
  }
}"""


async def test_a_stopped_kiosk_camera_pauses_the_meter_on_both_screens(
        sqlite_template: Path, tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)
    async with private_coturn() as turn:
        settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path,
                                 visit_minute_s=MINUTE_S, credit_block=500,
                                 media_stall_s=STALL_S, turn_secret=turn.secret,
                                 turn_urls=(turn.url,), ice_relay_only=True)
        app = create_app(settings, run_migrations=False, clock=scene_clock())
        async with TestClient(TestServer(app, host="127.0.0.1")) as client, \
                async_playwright() as pw:
            browser = await launch(pw, *MEDIA)
            api = Api(client)
            base = str(client.make_url("/")).rstrip("/")
            errors: list[str] = []
            try:
                seed = await visit_parties(api, PASSWORD)
                fam, kiosk = await _pages(browser, errors)
                await kiosk_sign_in(kiosk, base, seed, PIN)
                await log_in(fam, base, seed["email"], PASSWORD)
                await buy_credits(fam, CREDITS)
                visit_id = await _book_now(api, seed)
                await _join_both(fam, kiosk, expect)

                await kiosk.evaluate(STOP)
                stopped_at = time.monotonic()
                for page, text in ((fam, "The facility's camera is not sending."),
                                   (kiosk, "Your camera or microphone is not sending.")):
                    await expect(page.locator("#visit-status")).to_contain_text(text)
                paused_s = time.monotonic() - stopped_at
                billed = len(await _minutes(api, seed["family"].id, visit_id))
                await asyncio.sleep(3 * MINUTE_S)
                # At most the minute under way when the pause came was still to be debited.
                frozen = len(await _minutes(api, seed["family"].id, visit_id))
                assert frozen <= billed + 1, (billed, frozen)
                await asyncio.sleep(2 * MINUTE_S)
                assert len(await _minutes(api, seed["family"].id, visit_id)) == frozen

                await kiosk.evaluate(BACK)
                deadline = time.monotonic() + STALL_S + 10
                while len(await _minutes(api, seed["family"].id, visit_id)) <= frozen:
                    assert time.monotonic() < deadline, "billing did not resume"
                    await asyncio.sleep(0.2)
                await expect(fam.locator("#visit-status")).not_to_contain_text("not sending")
            finally:
                await browser.close()
            assert errors == [], errors
    print(f"Chromium kiosk: paused on both screens {paused_s:.1f} s after its tracks stopped "
          f"(threshold {STALL_S} s); {billed} minutes then, {frozen} after being frozen")
