"""Phone layout, logo and favicon (issue 19, item 8) in Debian's Chromium:

- at 390x844 the family app's six tabs sit on one row, none cut (their accessible names are
  still the whole words: "Find a person");
- a thread takes the contact list's place on a phone, with "← All contacts" back to the list
  (focus on the contact left); on a desktop both show side by side and there is no back button;
  "Show older messages" is not offered for a thread whose whole history is loaded;
- every select (a facility with a long name, the day picker, the credits, the gift's contact)
  is wide enough for its choice;
- a logo in each app's header and a favicon: every response of every page (the family app, the
  kiosk and the staff console, signed out and in, on every tab) is recorded and none is a 4xx
  or 5xx, except the signed-out session probe (GET /api/v1/me, 401: "not signed in" is how a
  page learns it must show the sign-in); /favicon.ico and each page's icon links load.

The app and the pages run on a clock from tests/support/clock.py (the Visits tab reads the
facility's
day). Screens saved: family-phone-tabs, family-phone-thread, family-phone-pickers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.conftest import fresh_sqlite, test_settings
from tests.integration.test_audit_log import named_staff
from tests.support.audit import Audit
from tests.support.browser import KIOSK, PHONE, chromium, kiosk_sign_in, require_chromium, shot
from tests.support.clock import browser_clock, running_clock
from tests.support.helpers import Api
from tests.support.pages import PASSWORD, family_account, log_in

START = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)  # noon at the facility (America/Chicago)
LONG_NAME = "Stateville Correctional Center"  # cut off in a half-width column before
SESSION_PROBE = "/api/v1/me"

# How wide a select must be for its chosen text: the text in the select's own font, its
# padding, and room for the drop-down arrow.
FITS = """sel => {
  const s = getComputedStyle(sel);
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = `${s.fontWeight} ${s.fontSize} ${s.fontFamily}`;
  const text = sel.selectedOptions[0] ? sel.selectedOptions[0].textContent : "";
  const pad = parseFloat(s.paddingLeft) + parseFloat(s.paddingRight);
  const need = ctx.measureText(text).width + pad + 24;
  return {id: sel.id, text, need: Math.ceil(need), have: sel.clientWidth,
          right: Math.round(sel.getBoundingClientRect().right)};
}"""
ONE_ROW = """nav => {
  const tabs = [...nav.querySelectorAll('[role=tab]')];
  return {tops: [...new Set(tabs.map(t => Math.round(t.getBoundingClientRect().top)))],
          cut: tabs.filter(t => t.scrollWidth > t.clientWidth).map(t => t.id),
          overflow: nav.scrollWidth - nav.clientWidth,
          right: Math.round(Math.max(...tabs.map(t => t.getBoundingClientRect().right)))};
}"""


async def test_phone_layout_logo_favicon_and_no_error_responses(sqlite_template: Path,
                                                                 tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    clock = running_clock(START)
    app = create_app(test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path),
                     run_migrations=False, clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, chromium() as browser:
        api = Api(client)
        admin = await api.admin()
        r = await api.call("POST", "/facilities", admin, json={
            "name": LONG_NAME, "timezone": "America/Chicago", "settings": {}})
        facility = r.body["facility"]["id"]
        staff = await named_staff(api, admin, facility, "Ana Diaz")
        number, device = await api.kiosk_person(staff, facility, "2468", "Dana Rivers")
        person = await api.kiosk_login(facility, number, "2468", device)
        family, email = await family_account(api, "Alex Rivers")
        await api.connect(family, person)
        assert (await api.buy(family, 1000)).status == 201
        for who, to, text, cod in ((family, person, "hello from home", False),
                                   (person, family, "hi!", True)):  # collect: no credits
            r = await api.call("POST", "/messages", who, key=text,
                               json={"to": to.id, "body": text, "cod": cod})
            assert r.status == 201, r.body

        base = str(client.make_url("/")).rstrip("/")
        responses: list[tuple[int, str, str]] = []  # (status, method, url)
        contexts = []

        async def context(viewport):
            ctx = await browser.new_context(viewport=viewport)
            await browser_clock(ctx, clock)
            ctx.on("response", lambda resp: responses.append(
                (resp.status, resp.request.method, resp.url)))
            contexts.append(ctx)
            return ctx, await ctx.new_page()

        errors: list[str] = []
        try:
            # --- the family app on a phone: one row of tabs ---
            _, fam = await context(PHONE)
            fam.on("pageerror", lambda e: errors.append(str(e)))
            await log_in(fam, base, email, PASSWORD)
            row = await fam.eval_on_selector("nav.tabs", ONE_ROW)
            assert len(row["tops"]) == 1 and row["cut"] == [] and row["overflow"] <= 0, row
            assert row["right"] <= PHONE["width"], row
            await expect(fam.get_by_role("tab", name="Find a person")).to_be_visible()
            await expect(fam.locator("header img.logo")).to_have_js_property("complete", True)
            assert await fam.eval_on_selector("header img.logo", "i => i.naturalWidth") > 0
            await shot(fam, "family-phone-tabs")

            # --- a thread in place of the list, and back ---
            contact = fam.locator("#threads button", has_text="Dana Rivers")
            await contact.click()
            await expect(fam.locator("li.msg")).to_have_count(2)
            await expect(fam.locator("#threads")).to_be_hidden()
            back = fam.get_by_role("button", name="← All contacts")
            await expect(back).to_be_visible()
            await expect(fam.get_by_role("button", name="Show older messages")).to_be_hidden()
            await shot(fam, "family-phone-thread")
            audit = Audit()
            await audit.screen(fam, "family, a thread with its back button")
            await fam.set_viewport_size(PHONE)
            assert audit.problems == [], "\n".join(audit.problems)
            await back.click()
            await expect(fam.locator("#threads")).to_be_visible()
            await expect(fam.locator("#thread")).to_be_hidden()
            await expect(contact).to_be_focused()

            # --- every picker wide enough for its choice ---
            for tab, selects in (("Find a person", ["#find-facility", "#find-relationship"]),
                                 ("Visits", ["#book-contact"]),
                                 ("Buy credits", ["#buy-credits"]),
                                 ("Give credits", ["#gift-to"])):
                await fam.get_by_role("tab", name=tab).click()
                for sel in selects:
                    await expect(fam.locator(sel)).to_be_visible()
                    if tab == "Visits":  # the week view: today first, scrolled inside itself
                        await expect(fam.locator("#slots section.week-day h5").first) \
                            .to_contain_text("Today")
                    fit = await fam.eval_on_selector(sel, FITS)
                    assert fit["need"] <= fit["have"], f"{tab}: {fit}"
                    assert fit["right"] <= PHONE["width"], f"{tab}: {fit}"
                if tab == "Visits":
                    await shot(fam, "family-phone-pickers")
            await fam.get_by_role("tab", name="Statement").click()
            await expect(fam.locator("#statement-rows tr").first).to_be_visible()

            # --- on a desktop: list and thread side by side, no back button ---
            _, wide = await context({"width": 1024, "height": 768})
            await log_in(wide, base, email, PASSWORD)
            await wide.locator("#threads button", has_text="Dana Rivers").click()
            await expect(wide.locator("li.msg")).to_have_count(2)
            await expect(wide.locator("#threads")).to_be_visible()
            await expect(wide.get_by_role("button", name="← All contacts")).to_be_hidden()

            # --- the kiosk and the staff console, signed out then in ---
            _, kiosk = await context(KIOSK)
            seed = {"facility_id": facility, "number": number, "device": device}
            await kiosk_sign_in(kiosk, base, seed, "2468")
            await expect(kiosk.locator("li.msg")).to_have_count(0)  # no thread open yet
            _, desk = await context({"width": 1280, "height": 900})
            await log_in(desk, base, staff.account["email"], "staff password",
                          "/static/staff.html")
            await expect(desk.locator("#audit-rows li").first).to_be_visible()

            # --- the favicon and each page's icon links ---
            for page in (fam, kiosk, desk):
                hrefs = await page.eval_on_selector_all(
                    "link[rel~=icon], link[rel=apple-touch-icon]", "ls => ls.map(l => l.href)")
                assert len(hrefs) == 3, hrefs
                for href in [*hrefs, base + "/favicon.ico"]:
                    got = await page.request.get(href)
                    assert got.status == 200, (href, got.status)
                    assert got.headers["content-type"].startswith("image/"), href
                    responses.append((got.status, "GET", href))
            assert errors == [], errors
        finally:
            for ctx in contexts:
                await ctx.close()

    bad = [(s, m, u) for s, m, u in responses if s >= 400
           and not (s == 401 and m == "GET" and u.endswith(SESSION_PROBE))]
    assert bad == [], bad
    probes = [u for s, m, u in responses if s == 401]
    assert len(probes) <= 4, probes  # one a signed-out page load at most
    assert any(u.endswith("/favicon.ico") for _, _, u in responses)
    assert len(responses) > 30, "the recorder saw the pages' requests"
