"""The family web app and the kiosk in Debian's Chromium (issue 5, "What must be shown"): a family
member signs up, buys 500 credits ($5.00 + $1.50 = $6.50), asks to connect; the person approves
on the kiosk; they exchange messages live both ways; the family sees the read receipt and the
balance fall by 50. Each screen is saved under docs/screenshots/ (linked from docs/clients.md)."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.conftest import fresh_sqlite, test_settings
from tests.support.browser import (
    KIOSK,
    PHONE,
    chromium,
    fill_card,
    kiosk_sign_in,
    loaded,
    require_chromium,
    seed_kiosk,
    shot,
)
from tests.support.helpers import Api, Who

PIN = "2468"


async def test_family_and_kiosk_first_scenario(sqlite_template: Path, tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    app = create_app(test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path),
                     run_migrations=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, chromium() as browser:
        seed = await seed_kiosk(Api(client), PIN)
        base = str(client.make_url("/")).rstrip("/")
        fam_ctx = await browser.new_context(viewport=PHONE, device_scale_factor=1)
        kiosk_ctx = await browser.new_context(viewport=KIOSK)
        try:
            fam, kiosk = await fam_ctx.new_page(), await kiosk_ctx.new_page()
            errors: list[str] = []
            for page in (fam, kiosk):
                page.on("pageerror", lambda e: errors.append(str(e)))

            # --- the family signs up ---
            await fam.goto(base + "/")
            await expect(fam.locator("body")).to_have_attribute("data-ready", "signed-out")
            await fam.get_by_label("Your name").fill("Alex Rivers")
            await fam.locator("#signup-email").fill(f"alex-{secrets.token_hex(3)}@example.test")
            await fam.locator("#signup-password").fill("correct horse battery")
            await shot(fam, "family-signup")
            await fam.get_by_role("button", name="Sign up").click()
            await expect(fam.locator("#app")).to_be_visible()
            await expect(fam.locator("html")).to_have_attribute("data-socket", "online")
            await expect(fam.locator("#balance")).to_have_text("0 credits")

            # --- buys 500 credits, the fee shown before paying ---
            await fam.get_by_role("tab", name="Buy credits").click()
            await fam.get_by_label("Credits", exact=True).select_option("500")
            await expect(fam.locator("#buy-price")).to_have_text("$5.00")
            await expect(fam.locator("#buy-fee")).to_have_text("$1.50")
            await expect(fam.locator("#buy-total")).to_have_text("$6.50")
            await expect(fam.locator("#buy-summary")).to_contain_text(
                "$5.00 + $1.50 fee = $6.50 total")
            # The card goes only to the payment processor's page: no card field here.
            await expect(fam.locator("#panel-credits input")).to_have_count(0)
            await expect(fam.locator("#buy-processor")).to_contain_text("Sandbox Payments")
            await shot(fam, "family-buy-credits")
            await fam.get_by_role("button", name="Continue to pay $6.50").click()
            await fam.wait_for_url(re.compile(r"/sandbox-pay/$"))  # the session kept in memory
            await expect(fam.get_by_role("heading", level=1)).to_contain_text("Sandbox Payments")
            await expect(fam.locator("#order")).to_have_text(
                "$6.50 for 500 Kinwire credits, to Kinwire.")
            # A declined card says what to do; the same page then pays with another.
            await fill_card(fam, "4000 0000 0000 0002")
            await fam.get_by_role("button", name="Pay $6.50").click()
            await expect(fam.locator("#pay-notice")).to_contain_text("Try another card")
            await fill_card(fam)
            await shot(fam, "sandbox-pay")
            await fam.get_by_role("button", name="Pay $6.50").click()
            await expect(fam.locator("#buy-notice")).to_contain_text("Paid $6.50")
            await expect(fam.locator("#balance")).to_have_text("500 credits")
            assert "confirmation" not in fam.url  # out of the address bar at once
            await expect(fam.locator("html")).to_have_attribute("data-socket", "online")

            # --- finds the person and asks to connect ---
            await fam.get_by_role("tab", name="Find a person").click()
            await fam.get_by_label("Name or inmate number").fill("dana")
            await fam.get_by_label("You are").select_option("parent")
            await fam.get_by_role("button", name="Search").click()
            await fam.get_by_role("button", name="Request connection with Dana Rivers").click()
            await expect(fam.locator("#connections")).to_contain_text("Waiting for approval")
            await shot(fam, "family-find-person")

            # --- the person signs in on a registered kiosk and approves ---
            await kiosk_sign_in(kiosk, base, seed, PIN, shot_as="kiosk-sign-in")
            await expect(kiosk.locator("#requests")).to_contain_text("Alex Rivers wants to connect")
            await expect(kiosk.locator("#requests")).to_contain_text("Says they are your parent.")
            await shot(kiosk, "kiosk-requests")
            await kiosk.get_by_role("button", name="Approve Alex Rivers").click()

            # --- the family sees the approval live and writes ---
            await fam.get_by_role("tab", name="Messages").click()
            thread = fam.locator("#threads button", has_text="Dana Rivers")
            await expect(thread).to_contain_text("No messages yet")  # approved, live
            await thread.click()
            await expect(fam.locator("#compose-price")).to_have_text(
                "Sending costs 50 credits (balance after: 450).")
            compose = fam.get_by_role("textbox", name="Message")
            await compose.fill("Hi Dana, it's Alex. We miss you!")
            await fam.get_by_role("button", name="Send (50 credits)").click()
            await expect(fam.locator("#balance")).to_have_text("450 credits")

            # --- the kiosk receives it live; opening it sends the read receipt ---
            k_thread = kiosk.locator("#threads button", has_text="Alex Rivers")
            await expect(k_thread).to_contain_text("1")  # the unread count, live
            await k_thread.click()
            await expect(kiosk.locator("#messages")).to_contain_text("We miss you!")
            mine = fam.locator("li.msg.mine", has_text="We miss you!")
            await expect(mine.locator("[data-receipt]")).to_have_text("Read")

            # --- the person has no credits: the reply goes collect ---
            await expect(kiosk.locator("#send-cod")).to_be_visible()
            await kiosk.get_by_label("Reply").fill("Thank you! Tell Mom I said hello.")
            await expect(fam.locator("#typing")).to_have_text("Dana Rivers is typing…")
            await shot(kiosk, "kiosk-chat")
            await kiosk.get_by_role("button", name="Send collect (they pay)").click()
            await expect(kiosk.locator("li.msg.mine")).to_contain_text("Tell Mom")

            # --- the family sees it live, locked, and pays 50 to open it ---
            locked = fam.locator("li.msg.theirs")
            pay = locked.get_by_role("button", name="Pay 50 credits to open")
            await expect(pay).to_be_visible()
            await expect(fam.locator("#typing")).to_have_text("")  # the message ends it
            await expect(fam.locator("#balance")).to_have_text("450 credits")
            await shot(fam, "family-chat-locked")
            await pay.click()
            await expect(locked).to_contain_text("Tell Mom I said hello.")
            await expect(fam.locator("#balance")).to_have_text("400 credits")
            await expect(kiosk.locator("li.msg.mine [data-receipt]")).to_have_text("Read")
            await shot(fam, "family-chat")

            # --- the socket is cut: the page shows it, resumes from its last seq, and a
            # message sent meanwhile appears exactly once ---
            await fam.evaluate("() => { const s = window.kinwire.socket;"
                               " s.backoffMinMs = 1500; s.ws.close(4000, 'test'); }")
            await expect(fam.locator("html")).to_have_attribute("data-socket", "offline")
            await expect(fam.locator(".conn")).to_have_text("Offline – reconnecting")
            sent = await kiosk.evaluate("""async () => {
                const r = await fetch('/api/v1/messages', {method: 'POST',
                  headers: {'Content-Type': 'application/json',
                            'Idempotency-Key': crypto.randomUUID()},
                  body: JSON.stringify({to: window.kinwire.current,
                                        body: 'Sent while you were away', cod: true})});
                return r.status; }""")
            assert sent == 201
            await expect(fam.locator("html")).to_have_attribute("data-socket", "online")
            await expect(fam.locator("li.msg.theirs")).to_have_count(2)
            assert errors == [], errors
        finally:
            await fam_ctx.close()
            await kiosk_ctx.close()


def _png(path: Path) -> Path:
    """A small, colourful PNG made on the spot (Pillow is a server dependency)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (160, 120), (70, 130, 180))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 80, 80), fill=(250, 210, 60))
    draw.rectangle((0, 90, 160, 120), fill=(60, 160, 80))
    image.save(path, format="PNG")
    return path


async def test_staff_reject_held_photo(sqlite_template: Path, tmp_path: Path) -> None:
    """Staff reject a held photo; the family sees the rejection with the reason and the
    credits back, live (issue 5, "What must be shown")."""
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    app = create_app(test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path),
                     run_migrations=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, chromium() as browser:
        api = Api(client)
        admin = await api.admin()
        facility_id = await api.facility(admin)  # review_photos is on by default
        staff_email = f"officer-{secrets.token_hex(3)}@example.test"
        r = await api.call("POST", f"/facilities/{facility_id}/staff", admin,
                           json={"email": staff_email, "password": "staff password",
                                 "name": "Officer Lane"})
        assert r.status == 201, r.body
        staff = await api.staff(admin, facility_id)
        person = await api.person(staff, facility_id)
        fam_email = f"sam-{secrets.token_hex(3)}@example.test"
        r = await api.call("POST", "/auth/signup", json={
            "email": fam_email, "password": "correct horse", "name": "Sam Rivers"})
        assert r.status == 201, r.body
        r = await api.call("POST", "/auth/login",
                           json={"email": fam_email, "password": "correct horse"})
        family = Who(r.body["token"], r.body["account"])
        assert (await api.buy(family, 500)).status == 201
        await api.connect(family, person)
        photo = _png(tmp_path / "park.png")

        base = str(client.make_url("/")).rstrip("/")
        fam_ctx = await browser.new_context(viewport=PHONE, device_scale_factor=1)
        staff_ctx = await browser.new_context(viewport=PHONE, device_scale_factor=1)
        try:
            fam, desk = await fam_ctx.new_page(), await staff_ctx.new_page()
            errors: list[str] = []
            for page in (fam, desk):
                page.on("pageerror", lambda e: errors.append(str(e)))

            # --- the family logs in and attaches a photo: the price includes it ---
            await fam.goto(base + "/")
            await expect(fam.locator("body")).to_have_attribute("data-ready", "signed-out")
            await fam.get_by_label("Email").first.fill(fam_email)
            await fam.locator("#login-password").fill("correct horse")
            await fam.get_by_role("button", name="Log in").click()
            await expect(fam.locator("html")).to_have_attribute("data-socket", "online")
            await expect(fam.locator("#balance")).to_have_text("500 credits")
            await fam.locator("#threads button", has_text="Pat Person").click()
            await expect(fam.locator("#compose-price")).to_have_text(
                "Sending costs 50 credits (balance after: 450).")
            await fam.get_by_label("Attach photos").set_input_files(str(photo))
            preview = fam.get_by_role("img", name="Photo 1: park.png")
            await expect(preview).to_be_visible()
            await expect(fam.locator("#compose-price")).to_have_text(
                "Sending costs 150 credits (50 + 1 photo × 100) (balance after: 350).")
            await fam.get_by_role("textbox", name="Message").fill("Us at the park on Sunday")
            await fam.get_by_role("button", name="Send (150 credits)").click()
            await expect(fam.locator("#balance")).to_have_text("350 credits")
            mine = fam.locator("li.msg.mine", has_text="Us at the park")
            await expect(mine).to_contain_text("Held for review")
            await expect(fam.locator("#compose-previews img")).to_have_count(0)
            thumb = mine.get_by_role("img", name="Photo 1 of 1")
            await expect(thumb).to_be_visible()
            assert await loaded(fam, thumb) > 0

            # --- staff log in to the console and reject it with a reason ---
            await desk.goto(base + "/static/staff.html")
            await expect(desk.locator("body")).to_have_attribute("data-ready", "signed-out")
            await desk.get_by_label("Email").fill(staff_email)
            await desk.get_by_label("Password").fill("staff password")
            await desk.get_by_role("button", name="Log in").click()
            await expect(desk.locator("body")).to_have_attribute("data-ready", "signed-in")
            item = desk.locator("#queue li", has_text="Us at the park")
            await expect(item).to_contain_text("Sam Rivers")
            await expect(desk.locator("#review-count")).to_have_text("1")
            held = item.get_by_role("img", name="Photo 1 of 1 from Sam Rivers")
            await expect(held).to_be_visible()
            await desk.wait_for_function(
                "() => [...document.querySelectorAll('#queue img')]"
                ".every(i => i.complete && i.naturalWidth > 0)")
            await item.get_by_label("Reason for rejecting (sent to Sam Rivers)").fill(
                "Photos of other residents are not allowed")
            await shot(desk, "staff-console")
            await item.get_by_role("button", name="Reject message from Sam Rivers").click()
            await expect(desk.locator("#notice")).to_contain_text("Rejected the message")
            await expect(desk.locator("#queue li")).to_have_count(0)
            await expect(desk.locator("#queue-empty")).to_be_visible()
            await expect(desk.locator("#audit-rows")).to_contain_text("reject")

            # --- the family sees it live: rejected with the reason, the credits back ---
            await expect(mine.locator(".badge.rejected")).to_have_text(
                "Rejected: Photos of other residents are not allowed")
            await expect(mine).to_contain_text("150 credits returned")
            await expect(fam.locator("#balance")).to_have_text("500 credits")
            await shot(fam, "family-photo-rejected")
            assert errors == [], errors
        finally:
            await fam_ctx.close()
            await staff_ctx.close()
