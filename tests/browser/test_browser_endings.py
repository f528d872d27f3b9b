"""The other ways a video visit ends, in Chromium (issue 5), and the balance reaching a second
tab live. One server, one coturn, two visits (tests/browser/test_browser_visit.py has the full
visit and
its set-up helpers, reused here):

1. A family signed in in two tabs buys credits in one; the other shows the new balance without a
   reload (the purchase's `balance` event). The family and the kiosk join a visit; once a
   minute is paid the family hangs up: "you hung up" on the family's screen, "Alex Rivers hung
   up" on the kiosk's, the visit is `hung_up` and no minute is billed after it.
2. A second family and person in another facility. On the kiosk, out of credits, the reply is
   offered collect (COD); the family's gift reaches the kiosk's balance live and the paid send
   comes back. Staff end their visit from the console's "Live visits"; both parties' screens
   say "Visit ended by staff." (`staff_ended`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from billing import ledger
from server.app import create_app
from server.schema import visits
from tests.conftest import fresh_sqlite, test_settings
from tests.support.audit import Audit
from tests.support.browser import KIOSK, PHONE, buy_credits, kiosk_sign_in, launch, require_chromium
from tests.support.clock import ZONE, browser_clock, scene_clock
from tests.support.helpers import Api, Who
from tests.support.pages import log_in
from tests.support.turn_server import private_coturn
from tests.support.visit_pages import MEDIA, MINUTE_S, PIN, visit_parties

PASSWORD = "correct horse battery"
CREDITS = 300


# Two visits in four Chromium pages: ~28 s in a full run, and over the suite's default 60 s
# once with four test processes on the two cores (its waits are bounded by `expect` alone).
@pytest.mark.timeout(120)
async def test_hang_up_and_staff_end_in_the_browsers(sqlite_template: Path,
                                                     tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)
    async with private_coturn() as turn:
        settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path,
                                 visit_minute_s=MINUTE_S, credit_block=150,
                                 turn_secret=turn.secret, turn_urls=(turn.url,),
                                 ice_relay_only=True)
        clock = scene_clock()
        app = create_app(settings, run_migrations=False, clock=clock)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client, \
                async_playwright() as pw:
            browser = await launch(pw, *MEDIA)
            api = Api(client)
            base = str(client.make_url("/")).rstrip("/")
            errors: list[str] = []
            try:
                hung_up = await _family_hangs_up(api, browser, base, errors, expect)
                await _staff_end_it(api, browser, base, clock, errors, expect)
                await _no_billing_after_hang_up(api, *hung_up)
            finally:
                await browser.close()
            assert errors == [], errors


async def _pages(browser, errors: list[str]):
    fam_ctx = await browser.new_context(viewport=PHONE)
    kiosk_ctx = await browser.new_context(viewport=KIOSK)
    fam, kiosk = await fam_ctx.new_page(), await kiosk_ctx.new_page()
    for page in (fam, kiosk):
        page.on("pageerror", lambda e: errors.append(str(e)))
    return fam, kiosk


async def _book_now(api: Api, seed: dict) -> str:
    """Book the block under way (12:00 at the facility by the test's clock) over HTTP: the
    grid itself is tested in tests/browser/test_browser_visit.py."""
    family = seed["family"]
    date = api.ctx.clock().astimezone(ZONE).date().isoformat()
    r = await api.call("GET", f"/facilities/{seed['facility_id']}/slots?date={date}", family)
    assert r.status == 200, r.body
    start = r.body["slots"][0]["start"]
    con = (await api.call("GET", "/connections", family)).body["connections"][0]["id"]
    r = await api.call("POST", "/visits", family, json={"connection_id": con, "start": start})
    assert r.status == 201, r.body
    return r.body["visit"]["id"]


async def _join_both(fam, kiosk, expect) -> None:
    await kiosk.get_by_role("button", name="Join the visit with Alex Rivers at 12:00").click()
    await expect(kiosk.locator("#visit-status")).to_have_text("Waiting for Alex Rivers to join…")
    await fam.get_by_role("tab", name="Visits").click()
    await fam.get_by_role("button", name="Join the visit with Dana Rivers at 12:00").click()
    # In the call and billing: at least one minute paid on both screens.
    for page in (fam, kiosk):
        await expect(page.locator("#visit-paid")).not_to_have_attribute("data-paid", "0")


async def _minutes(api: Api, family_id: str, visit_id: str) -> list[int]:
    async with api.ctx.store.read() as conn:
        rows = await ledger.statement(conn, family_id, limit=100)
    return sorted(t.amount for t in rows if t.kind == "visit_minute" and t.ref == visit_id)


async def _visit_row(api: Api, visit_id: str):
    async with api.ctx.store.read() as conn:
        return (await conn.execute(visits.select().where(visits.c.id == visit_id))).first()


async def _family_hangs_up(api: Api, browser, base: str, errors: list[str],
                           expect) -> tuple[Who, str, list[int], float]:
    seed = await visit_parties(api, PASSWORD)
    fam, kiosk = await _pages(browser, errors)
    await kiosk_sign_in(kiosk, base, seed, PIN)
    await log_in(fam, base, seed["email"], PASSWORD)
    other = await fam.context.new_page()  # a second tab of the same family (same cookie)
    other.on("pageerror", lambda e: errors.append(str(e)))
    await other.goto(base + "/")
    await expect(other.locator("html")).to_have_attribute("data-socket", "online")
    await expect(other.locator("#balance")).to_have_text("0 credits")

    # --- buys in the first tab; the second shows the new balance live, without a reload ---
    await buy_credits(fam, CREDITS)
    await expect(fam.locator("#balance")).to_have_text(f"{CREDITS} credits")
    await expect(other.locator("#balance")).to_have_text(f"{CREDITS} credits")
    assert await other.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    await other.close()

    # --- a visit; the family hangs up once a minute is paid ---
    visit_id = await _book_now(api, seed)
    await _join_both(fam, kiosk, expect)
    audit = Audit()  # the visit screen too (tests/browser/test_accessibility.py has the others)
    await audit.screen(fam, "family in a visit")
    await fam.set_viewport_size(PHONE)
    await fam.get_by_role("button", name="Hang up").click()
    for page, text in ((fam, "Visit ended: you hung up."),
                       (kiosk, "Visit ended: Alex Rivers hung up.")):
        ended = page.locator("#visit-ended")
        await expect(ended).to_have_attribute("data-reason", "hung_up")
        await expect(ended).to_have_text(text)
        await expect(page.get_by_role("button", name="Hang up")).to_be_hidden()
    await audit.screen(kiosk, "kiosk, the visit ended")
    await kiosk.set_viewport_size(KIOSK)
    assert audit.problems == [], "\n".join(audit.problems)
    row = await _visit_row(api, visit_id)
    assert (row.status, row.end_reason) == ("ended", "hung_up")
    billed = await _minutes(api, seed["family"].id, visit_id)
    assert billed and all(a == 50 for a in billed), billed
    await expect(fam.locator("#balance")).to_have_text(f"{CREDITS - 50 * len(billed)} credits")
    await fam.context.close()
    await kiosk.context.close()
    return seed["family"], visit_id, billed, time.monotonic()


async def _no_billing_after_hang_up(api: Api, family: Who, visit_id: str, billed: list[int],
                                    hung_up_at: float) -> None:
    """Checked at the end (the staff scenario runs meanwhile): at least two visit minutes
    after the hang-up, nothing more was debited."""
    await asyncio.sleep(max(0.0, hung_up_at + 2 * MINUTE_S + 0.5 - time.monotonic()))
    assert await _minutes(api, family.id, visit_id) == billed
    me = await api.call("GET", "/me", family)
    assert me.body["balance"] == CREDITS - 50 * len(billed)


async def _collect_follows_the_balance(api: Api, kiosk, seed: dict, expect) -> None:
    """Out of credits the kiosk offers collect (COD) and disables the paid send; a gift from
    the family arrives as a `balance` event and the paid send comes back, live."""
    await kiosk.locator("#threads button", has_text="Alex Rivers").click()
    await expect(kiosk.locator("#balance")).to_have_text("0 credits")
    await expect(kiosk.get_by_role("button", name="Send collect (they pay)")).to_be_visible()
    await expect(kiosk.locator("#send")).to_be_disabled()
    await expect(kiosk.locator("#compose-price")).to_have_text(
        "You have 0 credits; a message costs 50. Send it collect: they pay 50 credits to open it.")
    r = await api.call("POST", "/gifts", seed["family"],
                       json={"to": seed["person"].id, "credits": 100}, key=secrets.token_hex(8))
    assert r.status == 201, r.body
    await expect(kiosk.locator("#balance")).to_have_text("100 credits")
    await expect(kiosk.locator("#send-cod")).to_be_hidden()
    await expect(kiosk.locator("#send")).to_be_enabled()
    await expect(kiosk.locator("#compose-price")).to_have_text(
        "Sending costs 50 credits (balance after: 50).")


async def _staff_end_it(api: Api, browser, base: str, clock, errors: list[str],
                        expect) -> None:
    seed = await visit_parties(api, PASSWORD)  # another facility, family and person
    staff = await api.staff(await api.admin(), seed["facility_id"])
    assert (await api.buy(seed["family"], CREDITS)).status == 201
    visit_id = await _book_now(api, seed)
    fam, kiosk = await _pages(browser, errors)
    await kiosk_sign_in(kiosk, base, seed, PIN)
    await _collect_follows_the_balance(api, kiosk, seed, expect)
    await log_in(fam, base, seed["email"], PASSWORD)
    await _join_both(fam, kiosk, expect)

    desk_ctx = await browser.new_context(viewport=PHONE)
    desk = await desk_ctx.new_page()
    desk.on("pageerror", lambda e: errors.append(str(e)))
    # The console lists the visits of the 12 hours around the browser's now: give the browser
    # the server's (shifted) clock, so the visit under way at 12:00 is in its window.
    await browser_clock(desk_ctx, clock)
    await log_in(desk, base, staff.account["email"], "staff password", "/static/staff.html")
    end = desk.get_by_role("button", name="End the visit of Alex Rivers and Dana Rivers")
    # asks for a reason first (tests/browser/test_browser_staff.py has the dialog)
    await end.click()
    await desk.get_by_role("dialog").get_by_label("Reason").fill("shouting at the officer")
    await desk.get_by_role("button", name="End visit").click()
    await expect(desk.locator("#notice")).to_have_text(
        "Ended the visit of Alex Rivers and Dana Rivers.")
    for page in (fam, kiosk):
        ended = page.locator("#visit-ended")
        await expect(ended).to_have_attribute("data-reason", "staff_ended")
        await expect(ended).to_have_text("Visit ended by staff.")
    await expect(desk.locator(f"#visit-list li[data-visit='{visit_id}']")).to_contain_text(
        "ended (staff ended)")
    row = await _visit_row(api, visit_id)
    assert (row.status, row.end_reason) == ("ended", "staff_ended")
    for ctx in (fam.context, kiosk.context, desk_ctx):
        await ctx.close()
