"""One clock (issue 19, item 4) in Debian's Chromium: the family app, the kiosk and the staff
console, each in a browser set to Tokyo and to US English (a zone and a locale unlike the
facility's), show the same visit and the same message at the facility's wall clock, in one
format, labelled with the zone: "Sat 5 Dec, 23:00–23:30 CST", "Sat 5 Dec, 22:50 CST".

Before this, the same visit read "Sat 5 Dec, 23:00" (visit.js: en-GB, UTC-as-wall-clock), the
message beside it "Dec 6, 1:50 PM" (the browser's zone and locale) and the staff console
"Dec 6, 2:00 PM". The app and the pages run on tests/support/clock.py's running clock.
Screens saved: family-visits-facility-clock, staff-facility-clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.schema import connections, visits
from store.ids import new_id
from tests.conftest import fresh_sqlite, test_settings
from tests.integration.test_audit_log import named_staff
from tests.support.browser import KIOSK, PHONE, chromium, kiosk_sign_in, require_chromium, shot
from tests.support.clock import browser_clock, running_clock
from tests.support.helpers import Api
from tests.support.pages import PASSWORD, family_account, log_in

# 22:50 on Saturday 5 December at the facility (America/Chicago, CST = UTC-6): already Sunday
# in UTC, and 13:50 on Sunday in Tokyo.
START = datetime(2026, 12, 6, 4, 50, tzinfo=UTC)
BROWSER = {"timezone_id": "Asia/Tokyo", "locale": "en-US"}
VISIT = "Sat 5 Dec, 23:00–23:30 CST"
MESSAGE = "Sat 5 Dec, 22:50 CST"


async def test_three_apps_show_the_facility_clock_in_one_format(sqlite_template: Path,
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
        facility = await api.facility(admin)
        staff = await named_staff(api, admin, facility, "Ana Diaz")
        number, device = await api.kiosk_person(staff, facility, "2468", "Dana Rivers")
        person = await api.kiosk_login(facility, number, "2468", device)
        family, email = await family_account(api, "Alex Rivers")
        await api.connect(family, person)
        assert (await api.buy(family, 1000)).status == 201
        r = await api.call("POST", "/messages", family, key="m1",
                           json={"to": person.id, "body": "see you at eleven"})
        assert r.body["message"]["status"] == "delivered", r.body
        start = START + timedelta(minutes=10)
        async with api.ctx.store.write() as conn:
            con = (await conn.execute(connections.select().where(
                connections.c.family_id == family.id))).first()
            await conn.execute(visits.insert().values(
                id=new_id("vis"), facility_id=facility, connection_id=con.id,
                family_id=family.id, person_id=person.id, booked_by=family.id, start_at=start,
                end_at=start + timedelta(minutes=30), blocks=1, minute_price=50,
                media="direct", record=True, status="scheduled", created_at=START,
                updated_at=START))

        base = str(client.make_url("/")).rstrip("/")
        contexts = [await browser.new_context(viewport=size, **BROWSER)
                    for size in (PHONE, KIOSK, {"width": 1280, "height": 900})]
        for ctx in contexts:
            await browser_clock(ctx, clock)
        fam, kiosk, desk = [await ctx.new_page() for ctx in contexts]
        errors: list[str] = []
        for page in (fam, kiosk, desk):
            page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            assert await fam.evaluate("new Date().getTimezoneOffset()") == -540, "Tokyo"

            # --- family: the message and the visit, both at the facility's clock ---
            await log_in(fam, base, email, PASSWORD)
            await fam.locator("#threads button", has_text="Dana Rivers").click()
            mine = fam.locator("li.msg.mine", has_text="see you at eleven")
            await expect(mine.locator("time")).to_have_text(MESSAGE)
            await fam.get_by_role("tab", name="Visits").click()
            await expect(fam.locator("#visit-list li").first).to_contain_text(VISIT)
            await shot(fam, "family-visits-facility-clock")

            # --- kiosk: the same message and visit ---
            seed = {"facility_id": facility, "number": number, "device": device}
            await kiosk_sign_in(kiosk, base, seed, "2468")
            await expect(kiosk.locator("#kiosk-visits li").first).to_contain_text(VISIT)
            await kiosk.locator("#threads button", has_text="Alex Rivers").click()
            theirs = kiosk.locator("li.msg", has_text="see you at eleven")
            await expect(theirs.locator("time")).to_have_text(MESSAGE)

            # --- staff: the visit, and the audit log's times, at the facility's clock ---
            await log_in(desk, base, staff.account["email"], "staff password",
                          "/static/staff.html")
            await expect(desk.locator("#visit-list li").first).to_contain_text(VISIT)
            await expect(desk.locator("#audit-rows li time").first).to_have_text(
                "Sat 5 Dec, 22:50 CST")
            await desk.locator("#visits").scroll_into_view_if_needed()
            await shot(desk, "staff-facility-clock", full_page=False)
            assert errors == [], errors
        finally:
            for ctx in contexts:
                await ctx.close()
