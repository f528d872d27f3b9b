"""The family statement of issue 19, item 6, in Debian's Chromium at phone size: a visit of 18
billed minutes is one line with the person's name, a purchase shows its dollars, a rejected
photo message's refunds are one line tied to it, and a range of days downloads as CSV.

The app and the page run on a clock from tests/support/clock.py. Screen saved:
family-statement-grouped.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.browser.test_browser_more import _rows
from tests.conftest import fresh_sqlite, test_settings
from tests.integration.test_audit_log import visit_in_call
from tests.integration.test_photos import png
from tests.integration.test_statement import minutes
from tests.support.audit import Audit
from tests.support.browser import PHONE, chromium, require_chromium, shot
from tests.support.clock import browser_clock, running_clock
from tests.support.helpers import Api
from tests.support.pages import PASSWORD, family_account, log_in

START = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)  # 14:00 on Saturday 5 December in Chicago


async def test_the_statement_groups_a_visit_and_exports_csv(sqlite_template: Path,
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
        staff = await api.staff(admin, facility)
        number, device = await api.kiosk_person(staff, facility, "2468", "Dana Rivers")
        person = await api.kiosk_login(facility, number, "2468", device)
        family, email = await family_account(api, "Alex Rivers")
        await api.connect(family, person)
        assert (await api.buy(family, 2000)).status == 201
        visit_id = await visit_in_call(api, family, person, facility)
        await minutes(api, family.id, visit_id, range(1, 19))
        form = FormData()
        form.add_field("file", png(), filename="p.png", content_type="image/png")
        photo = (await api.call("POST", "/photos", family, data=form)).body["photo_id"]
        r = await api.call("POST", "/messages", family, key="m1",
                           json={"to": person.id, "body": "a picture", "photo_ids": [photo]})
        assert r.body["message"]["status"] == "held"
        r = await api.call("POST", f"/review/{r.body['message']['id']}/reject", staff,
                           json={"reason": "not allowed"})
        assert r.status == 200

        ctx = await browser.new_context(viewport=PHONE, accept_downloads=True)
        await browser_clock(ctx, clock)
        fam = await ctx.new_page()
        errors: list[str] = []
        fam.on("pageerror", lambda e: errors.append(str(e)))
        try:
            await log_in(fam, str(client.make_url("/")).rstrip("/"), email, PASSWORD)
            await fam.get_by_role("tab", name="Statement").click()
            await expect(fam.locator("#statement-rows tr")).to_have_count(4)
            assert await _rows(fam, "#statement-rows tr") == [
                ["Refund: message to Dana Rivers rejected by review", "+150", "1100"],
                ["Message to Dana Rivers (1 photo)", "−150", "950"],
                ["Video visit with Dana Rivers, 18 minutes", "−900", "1100"],
                ["Bought credits: $20.00 + $1.50 fee = $21.50 (card ending 4242)", "+2000",
                 "2000"]]
            await fam.get_by_label("From", exact=True).fill("2026-12-05")
            await fam.get_by_label("To", exact=True).fill("2026-12-05")
            await shot(fam, "family-statement-grouped")
            async with fam.expect_download() as download:
                await fam.get_by_role("link", name="Download CSV").click()
            saved = tmp_path / "statement.csv"
            await (await download.value).save_as(saved)
            rows = list(csv.DictReader(io.StringIO(saved.read_bytes().decode())))
            assert [(r["what"], r["credits"]) for r in rows] == [
                ("Refund: message to Dana Rivers rejected by review", "150"),
                ("Message to Dana Rivers (1 photo)", "-150"),
                ("Video visit with Dana Rivers, 18 minutes", "-900"),
                ("Bought credits: $20.00 + $1.50 fee = $21.50, visa ending 4242", "2000")]
            assert rows[3]["paid (USD)"] == "21.50"
            audit = Audit()
            await audit.screen(fam, "family, the grouped statement and its CSV form")
            assert audit.problems == [], "\n".join(audit.problems)
            assert errors == [], errors
        finally:
            await ctx.close()
