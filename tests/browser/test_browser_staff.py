"""The staff console of issue 19, item 7, in Debian's Chromium (docs/clients.md):

- End asks for confirmation and a reason: an empty reason is refused in the dialog, Cancel keeps
  the visit going, and the ended visit appears in the audit log as a sentence with names;
- the audit log filters by action and downloads the same entries as CSV;
- the review queue filters by type, and a selection is rejected at once (the family's credits
  come back once per message);
- a refused setting is explained beside its field, in plain words.

The visit is under way on the test's clock (tests/support/clock.py), given to the page too.
Screens saved: staff-end-visit, staff-audit-sentences, staff-review-selection,
staff-settings-error.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.conftest import fresh_sqlite, test_settings
from tests.integration.test_audit_log import named_family, named_staff, visit_in_call
from tests.integration.test_photos import png
from tests.support.audit import Audit
from tests.support.browser import chromium, require_chromium, shot
from tests.support.clock import browser_clock, running_clock
from tests.support.helpers import Api
from tests.support.pages import log_in

DESK = {"width": 1280, "height": 900}
# Saturday 5 December 2026, 15:00 at the facility (America/Chicago).
START = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)


async def test_end_with_a_reason_audit_sentences_csv_bulk_review_and_settings_errors(
        sqlite_template: Path, tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    clock = running_clock(START)
    settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path)
    app = create_app(settings, run_migrations=False, clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, chromium() as browser:
        api = Api(client)
        admin = await api.admin()
        facility = await api.facility(admin, review_mode="hold")
        ana = await named_staff(api, admin, facility, "Ana Diaz")
        number, device = await api.kiosk_person(ana, facility, "2468", "Dana Rivers")
        person = await api.kiosk_login(facility, number, "2468", device)
        alex = await named_family(api, "Alex Rivers")
        await api.connect(alex, person)
        assert (await api.buy(alex, 1000)).status == 201
        form = FormData()
        form.add_field("file", png(), filename="p.png", content_type="image/png")
        photo = (await api.call("POST", "/photos", alex, data=form)).body["photo_id"]
        for i, extra in enumerate([{"photo_ids": [photo]}, {}, {}]):
            r = await api.call("POST", "/messages", alex, key=f"m{i}",
                               json={"to": person.id, "body": f"Note {i}", **extra})
            assert r.body["message"]["status"] == "held", r.body
        balance = (await api.call("GET", "/me", alex)).body["balance"]
        visit_id = await visit_in_call(api, alex, person, facility)

        base = str(client.make_url("/")).rstrip("/")
        ctx = await browser.new_context(viewport=DESK, accept_downloads=True)
        await browser_clock(ctx, clock)
        desk = await ctx.new_page()
        errors: list[str] = []
        desk.on("pageerror", lambda e: errors.append(str(e)))
        try:
            await log_in(desk, base, ana.account["email"], "staff password",
                          "/static/staff.html")

            # --- End: a dialog that needs a reason; Cancel keeps the visit going ---
            item = desk.locator(f"#visit-list li[data-visit='{visit_id}']")
            end = item.get_by_role("button", name="End the visit of Alex Rivers and Dana Rivers")
            await end.click()
            dialog = desk.get_by_role("dialog", name="End this visit?")
            await expect(dialog).to_be_visible()
            await dialog.get_by_role("button", name="Keep the visit going").click()
            await expect(dialog).to_be_hidden()
            await expect(end).to_be_focused()
            await end.click()
            await dialog.get_by_role("button", name="End visit").click()
            await expect(desk.locator("#end-notice")).to_have_text(
                "Write why the visit is ended: the reason goes to the audit log.")
            assert (await api.call("GET", "/visits", ana)).body["visits"][0]["status"] == "open"
            await dialog.get_by_label("Reason").fill("threatening language")
            audit = Audit()  # the new screens pass the same audit as the others
            await audit.screen(desk, "staff, the End dialog")
            await desk.set_viewport_size(DESK)
            await shot(desk, "staff-end-visit", full_page=False)
            await dialog.get_by_role("button", name="End visit").click()
            await expect(dialog).to_be_hidden()
            await expect(desk.locator("#notice")).to_have_text(
                "Ended the visit of Alex Rivers and Dana Rivers.")
            sentence = ("Officer Ana Diaz ended the visit of Alex Rivers and Dana Rivers: "
                        "'threatening language'")
            await expect(desk.locator("#audit-rows li").first).to_contain_text(sentence)
            await expect(item).to_have_attribute("data-status", "ended")

            # --- the audit log: filter by action, then the same entries as CSV ---
            await desk.get_by_label("What", exact=True).select_option(label="Ended a visit")
            await desk.get_by_role("button", name="Show entries").click()
            await expect(desk.locator("#audit-rows li")).to_have_count(1)
            await desk.locator("#audit").scroll_into_view_if_needed()
            await shot(desk, "staff-audit-sentences", full_page=False)
            async with desk.expect_download() as download:
                await desk.get_by_role("link", name="Download these entries as CSV").click()
            saved = tmp_path / "audit.csv"
            await (await download.value).save_as(saved)
            rows = list(csv.DictReader(io.StringIO(saved.read_bytes().decode())))
            assert [r["what happened"] for r in rows] == [sentence]
            assert rows[0]["time"].endswith("-06:00"), "the facility's time, with its offset"

            # --- review: filter by type, then reject a selection at once ---
            await desk.get_by_label("Type", exact=True).select_option(label="With photos")
            await expect(desk.locator("#queue li")).to_have_count(1)
            await expect(desk.locator("#queue li")).to_contain_text("Note 0")
            await desk.get_by_label("Type", exact=True).select_option(label="All held messages")
            await expect(desk.locator("#queue li")).to_have_count(3)
            await desk.get_by_label("Select every message shown").check()
            await expect(desk.locator("#bulk-reject")).to_have_text("Reject selected (3)")
            await desk.get_by_label("Reason for rejecting the selected").fill("Not allowed here")
            await desk.locator("#review").scroll_into_view_if_needed()
            await shot(desk, "staff-review-selection", full_page=False)
            await desk.get_by_role("button", name="Reject selected (3)").click()
            await expect(desk.locator("#notice")).to_have_text(
                "Rejected 3 messages: Not allowed here. The credits went back.")
            await expect(desk.locator("#queue li")).to_have_count(0)
            refunded = (await api.call("GET", "/me", alex)).body["balance"]
            assert refunded == balance + 3 * 50 + 100, "each message and its photo, once"

            # --- settings (an administrator): a refused value explained beside its field ---
            boss_ctx = await browser.new_context(viewport=DESK)  # its own cookies
            boss = await boss_ctx.new_page()
            boss.on("pageerror", lambda e: errors.append(str(e)))
            await log_in(boss, base, admin.account["email"], "admin password",
                          "/static/staff.html")
            await boss.get_by_label("Visiting from").fill("22:00")
            await boss.get_by_label("Visiting until").fill("08:00")
            await boss.get_by_role("button", name="Save settings").click()
            problem = "Visiting hours must start before they end."
            await expect(boss.locator("#settings-notice")).to_have_text(problem)
            until = boss.get_by_label("Visiting until")
            await expect(until).to_have_attribute("aria-invalid", "true")
            await expect(boss.locator("#err-set-hours-end")).to_have_text(problem)
            await expect(until).to_have_accessible_description(problem)
            await boss.locator("#settings").scroll_into_view_if_needed()
            await shot(boss, "staff-settings-error", full_page=False)
            await audit.screen(boss, "staff, a setting refused")
            await audit.screen(desk, "staff, review filters and a selection decided")
            assert audit.problems == [], "\n".join(audit.problems)
            await boss.get_by_label("Visiting from").fill("07:00")
            await boss.get_by_role("button", name="Save settings").click()
            await expect(boss.locator("#settings-notice")).to_have_text("Saved: visit hours.")
            await expect(boss.locator("p.field-error")).to_have_count(0)
            assert errors == [], errors
        finally:
            await ctx.close()
