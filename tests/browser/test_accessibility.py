"""Accessibility of every screen of the three apps, in Chromium (issue 5, "usable by keyboard,
labelled for screen readers, readable on a phone-sized screen"). docs/clients.md describes it.

Each screen is checked at a phone viewport (375×740) and on a desktop (1280×800):
- every visible interactive element (button, a[href], input, select, textarea, summary,
  [role=button|link|tab|checkbox], [contenteditable], [tabindex]) has an accessible name, as
  Chromium's own accessibility tree computes it (CDP `Accessibility.getFullAXTree`, matched to
  the DOM by backend node id), and is not hidden from that tree;
- every image has an `alt` attribute;
- at 375 px nothing is wider than the viewport (`scrollWidth <= innerWidth`).
And by keyboard only: Tab (or Shift+Tab) reaches each screen's primary action and Enter or
Space activates it, the effect checked on the page: signing in (family, kiosk, staff), opening a
thread and sending a message, paying, cancelling a visit, approving a request, a collect reply
on the kiosk, opening a photo on the kiosk (a modal dialog: focus moves into it, Escape closes
it and focus returns to the photo), approving a held message, the staff console's section
links.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.conftest import fresh_sqlite, test_settings
from tests.integration.test_photos import png, upload
from tests.support.audit import PHONE, Audit
from tests.support.browser import launch, require_chromium
from tests.support.clock import ZONE, browser_clock, scene_clock
from tests.support.helpers import Api, Who
from tests.support.visit_pages import PIN, visit_parties

PASSWORD = "correct horse battery"


async def tab_to(page, target, *, back: bool = False, presses: int = 60) -> int:
    """Press Tab (Shift+Tab) until `target` (a locator) has the focus; the number of presses.

    The locator is resolved again after every press: a screen may re-render (a push for the
    message just sent) and replace the element while the focus travels, so a mark set on the
    element once would be lost with it (this failed under load)."""
    for n in range(1, presses + 1):
        await page.keyboard.press("Shift+Tab" if back else "Tab")
        if await target.evaluate("el => el === document.activeElement"):
            return n
    focused = await page.evaluate("() => document.activeElement?.outerHTML.slice(0, 120)")
    raise AssertionError(f"{presses} × Tab did not reach {target}; focus on {focused}")


async def _seed(api: Api) -> dict[str, Any]:
    """A connected family with credits, a message each way (the person's collect), a held one
    for the console, an approved photo, a booked visit tomorrow, and a second family's
    pending request."""
    seed = await visit_parties(api, PASSWORD)
    fam, person = seed["family"], seed["person"]
    admin = await api.admin()
    r = await api.call("PATCH", f"/facilities/{seed['facility_id']}", admin,
                       json={"settings": {"keywords": ["parcel"]}})  # "parcel" is held
    assert r.status == 200, r.body
    seed["staff"] = await api.staff(admin, seed["facility_id"])
    assert (await api.buy(fam, 1000)).status == 201
    for who, to, body, extra in ((fam, person, "Hello from home", {}),
                                 (person, fam, "Thank you, write soon", {"cod": True}),
                                 (fam, person, "About the parcel", {})):
        r = await api.call("POST", "/messages", who, json={"to": to.id, "body": body, **extra},
                           key=secrets.token_hex(8))
        assert r.status == 201, r.body
    photo = (await upload(api, fam, png((400, 300), "RGB"), "garden.png")).body["photo_id"]
    r = await api.call("POST", "/messages", fam, json={"to": person.id, "body": "The garden",
                                                       "photo_ids": [photo]},
                       key=secrets.token_hex(8))
    assert r.status == 201 and r.body["message"]["status"] == "held", r.body
    r = await api.call("POST", f"/review/{r.body['message']['id']}/approve", seed["staff"])
    assert r.status == 200, r.body
    other = await api.family("Sam")  # "Sam" is the name the kiosk shows
    r = await api.call("POST", "/connections", other,
                       json={"person_id": person.id, "relationship": "friend"})
    assert r.status == 201, r.body
    day = (api.ctx.clock().astimezone(ZONE) + timedelta(days=1)).date()
    r = await api.call("GET", f"/facilities/{seed['facility_id']}/slots?date={day}", fam)
    noon = datetime.combine(day, time(12), ZONE)
    noon = next(s["start"] for s in r.body["slots"]
                if datetime.fromisoformat(s["start"]) == noon)
    con = (await api.call("GET", "/connections", fam)).body["connections"][0]["id"]
    r = await api.call("POST", "/visits", fam, json={"connection_id": con, "start": noon})
    assert r.status == 201, r.body
    return seed


async def test_every_screen_is_named_fits_a_phone_and_works_by_keyboard(
        sqlite_template: Path, tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=10_000)
    settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path)
    # Noon at the facility whenever it runs: "today" has bookable blocks left (at 23:16 in
    # Chicago the real clock left none, and this test failed; tests/integration/test_wall_clock.py).
    clock = scene_clock()
    app = create_app(settings, run_migrations=False, clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, \
            async_playwright() as pw:
        browser = await launch(pw)
        api = Api(client)
        seed = await _seed(api)
        base = str(client.make_url("/")).rstrip("/")
        audit = Audit()
        errors: list[str] = []
        try:
            for run in (_family, _kiosk, _staff):
                ctx = await browser.new_context(viewport=PHONE)
                await browser_clock(ctx, clock)
                page = await ctx.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                try:
                    await run(page, base, seed, audit, expect)
                finally:
                    await ctx.close()
        finally:
            await browser.close()
    assert audit.problems == [], "\n".join(audit.problems)
    assert errors == [], errors
    # Every screen was looked at, with something in it to check.
    # The photo dialog holds one control (Close); nothing of the page behind it is reachable.
    dialog = {k: audit.checked.pop(k) for k in ("kiosk photo @desktop", "kiosk photo @phone")}
    assert dialog == {"kiosk photo @desktop": 1, "kiosk photo @phone": 1}, dialog
    assert len(audit.checked) == 2 * 14 and min(audit.checked.values()) >= 3, audit.checked


async def _family(page, base: str, seed: dict, audit: Audit, expect) -> None:
    await page.goto(base + "/")
    await expect(page.locator("body")).to_have_attribute("data-ready", "signed-out")
    await audit.screen(page, "family signed out")
    # Keyboard sign-in: Tab to the email field, type, Tab, type, Tab to "Log in", Enter.
    await tab_to(page, page.locator("#login-email"))
    await page.keyboard.type(seed["email"])
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await tab_to(page, page.get_by_role("button", name="Log in"))
    await page.keyboard.press("Enter")
    await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
    await expect(page.locator("html")).to_have_attribute("data-socket", "online")
    await audit.screen(page, "family inbox")

    # Inbox: from the tab list, Tab to the contact, Enter opens the thread (focus to compose).
    await tab_to(page, page.get_by_role("tab", name="Messages"))
    await tab_to(page, page.locator("#threads button").first)
    await page.keyboard.press("Enter")
    await expect(page.locator("#compose-body")).to_be_focused()
    await expect(page.get_by_role("button", name="Pay 50 credits to open")).to_be_visible()
    await audit.screen(page, "family compose")
    # Compose: type, Tab to Send, Space sends.
    await page.keyboard.type("Sent by keyboard")
    await tab_to(page, page.locator("#send"))
    await page.keyboard.press("Space")
    await expect(page.locator("li.msg.mine", has_text="Sent by keyboard")).to_be_visible()

    # Buy credits: arrow keys in the tab list, Tab to "Continue to pay", Enter; on the payment
    # processor's page (audited too) the card typed field by field with Tab, Enter pays, and
    # the app comes back with the credits.
    await page.get_by_role("tab", name="Messages").focus()
    for _ in range(3):
        await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Buy credits")).to_be_focused()
    await audit.screen(page, "family buy credits")
    await tab_to(page, page.locator("#pay"))
    await page.keyboard.press("Enter")
    await expect(page.locator("#pay-form")).to_be_visible()
    await expect(page.get_by_label("Card number")).to_be_focused()
    await audit.screen(page, "payment processor's page")
    for typed in ("4242424242424242", "12", "2031", "123", "Test Family"):
        await page.keyboard.type(typed)
        await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name=re.compile(r"^Pay \$"))).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#buy-notice")).to_contain_text("credits added")

    await page.get_by_role("tab", name="Buy credits").focus()
    await page.keyboard.press("End")
    await expect(page.get_by_role("tab", name="Statement")).to_be_focused()
    await expect(page.locator("#statement-rows tr").first).to_be_visible()
    await audit.screen(page, "family statement")

    # Visits: Tab to the booked visit's Cancel, Space cancels it.
    await page.keyboard.press("Home")
    for _ in range(2):
        await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Visits")).to_be_focused()
    cancel = page.get_by_role("button", name="Cancel the visit with Dana Rivers at 12:00")
    await expect(cancel).to_be_visible()
    await expect(page.locator("#slots button.slot").first).to_be_visible()
    await audit.screen(page, "family visits")
    await tab_to(page, cancel)
    await page.keyboard.press("Space")
    await expect(page.locator("#book-notice")).to_have_text(
        re.compile(r"^Cancelled the visit at 12:00 C[SD]T\.$"))


async def _kiosk(page, base: str, seed: dict, audit: Audit, expect) -> None:
    await page.goto(base + "/static/kiosk.html")
    await expect(page.locator("body")).to_have_attribute("data-ready", "signed-out")
    # A kiosk not set up shows the set-up panel alone; set it up by keyboard.
    await expect(page.locator("#device")).to_be_visible()
    await expect(page.locator("#login-form")).to_be_hidden()
    await audit.screen(page, "kiosk set-up")
    await tab_to(page, page.locator("#device-facility"))
    await page.keyboard.type(seed["facility_id"])
    await page.keyboard.press("Tab")
    await page.keyboard.type(seed["device"])
    await tab_to(page, page.get_by_role("button", name="Save on this device"))
    await page.keyboard.press("Enter")
    await expect(page.locator("#login-number")).to_be_focused()  # saving moves on to sign-in
    await expect(page.locator("#device")).to_be_hidden()  # a resident sees only the sign-in
    await audit.screen(page, "kiosk sign in")
    await page.locator("#login-number").focus()  # the viewport changes may have moved it
    await page.keyboard.type(seed["number"])
    await page.keyboard.press("Tab")
    await page.keyboard.type(PIN)
    await tab_to(page, page.get_by_role("button", name="Sign in"))
    await page.keyboard.press("Enter")
    await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
    await expect(page.locator("html")).to_have_attribute("data-socket", "online")

    # Requests: Tab to Approve, Space approves.
    approve = page.get_by_role("button", name="Approve Sam")
    await expect(approve).to_be_visible()
    await audit.screen(page, "kiosk requests")
    await tab_to(page, approve)
    await page.keyboard.press("Space")
    await expect(page.locator("#requests")).to_contain_text("No requests.")

    # Inbox: open Alex's thread, type, the person has no credits: Tab to "Send collect", Enter.
    await tab_to(page, page.locator("#threads button", has_text="Alex Rivers"))
    await page.keyboard.press("Enter")
    await expect(page.locator("#compose-body")).to_be_focused()
    await page.keyboard.type("A collect reply")
    collect = page.get_by_role("button", name="Send collect (they pay)")
    await expect(collect).to_be_visible()
    await audit.screen(page, "kiosk inbox")
    await tab_to(page, collect)
    await page.keyboard.press("Enter")
    await expect(page.locator("li.msg.mine", has_text="A collect reply")).to_be_visible()

    # The approved photo: Tab to it, Enter opens it in a modal dialog with the focus on Close;
    # Escape closes it and the focus is back on the photo.
    photo = page.get_by_role("link", name="Photo 1 of 1 from Alex Rivers")
    await tab_to(page, photo, back=True)
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Photo 1 of 1 from Alex Rivers")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("button", name="Close")).to_be_focused()
    await audit.screen(page, "kiosk photo")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(photo).to_be_focused()


async def _staff(page, base: str, seed: dict, audit: Audit, expect) -> None:
    staff: Who = seed["staff"]
    await page.goto(base + "/static/staff.html")
    await expect(page.locator("body")).to_have_attribute("data-ready", "signed-out")
    await audit.screen(page, "staff signed out")
    await tab_to(page, page.locator("#login-email"))
    await page.keyboard.type(staff.account["email"])
    await page.keyboard.press("Tab")
    await page.keyboard.type("staff password")
    await tab_to(page, page.get_by_role("button", name="Log in"))
    await page.keyboard.press("Enter")
    await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
    approve = page.get_by_role("button", name="Approve message from Alex Rivers")
    await expect(approve).to_be_visible()
    await audit.screen(page, "staff review queue")
    # The section links work by keyboard.
    for link, anchor in (("Live visits", "#visits"), ("Audit log", "#audit"),
                         ("Facility settings", "#settings")):
        await page.get_by_role("link", name="Review queue").focus()
        await tab_to(page, page.get_by_role("link", name=link))
        await page.keyboard.press("Enter")
        await expect(page).to_have_url(base + "/static/staff.html" + anchor)
    await audit.screen(page, "staff visits, audit log and settings")
    await tab_to(page, approve, back=True)
    await page.keyboard.press("Space")
    await expect(page.locator("#notice")).to_have_text("Approved the message from Alex Rivers.")
    await expect(page.locator("#review-h")).to_be_focused()
