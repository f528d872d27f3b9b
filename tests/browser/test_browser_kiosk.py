"""The kiosk as a person uses it (issue 19, item 1), in Debian's Chromium: a kiosk not set up
shows only the staff set-up; once set up a resident sees only the sign-in (set-up behind a
staff control that asks for the device token again); a connection request says who asks, what
they say they are and when; an approved photo shows at a readable size and opens in a modal
dialog; a held and a rejected photo never reach the page.

Adversaries: a resident who tries the photos of messages not approved for them, by id, from the
kiosk's own signed-in page (the cookie session a browser really uses); a resident who opens the
staff set-up to read the saved device token (the field is never filled back in); a kiosk whose
saved token is wrong or revoked (the sign-in says so and the set-up comes back)."""

from __future__ import annotations

import io
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, ImageDraw

from server.app import create_app
from tests.conftest import fresh_sqlite, test_settings
from tests.integration.test_photos import upload
from tests.support.browser import KIOSK, PHONE, chromium, loaded, require_chromium, seed_kiosk, shot
from tests.support.clock import running_clock
from tests.support.helpers import Api, Who

PIN = "8642"
T0 = datetime(2026, 3, 2, 15, 10, tzinfo=UTC)  # 09:10 at the facility (America/Chicago)


def garden_photo() -> bytes:
    """A 1200x900 picture (the thumbnail is 320 px wide; the full photo keeps 1200)."""
    image = Image.new("RGB", (1200, 900), (90, 160, 90))
    draw = ImageDraw.Draw(image)
    draw.rectangle((100, 500, 1100, 880), fill=(120, 80, 40))
    draw.ellipse((800, 80, 1000, 280), fill=(250, 210, 60))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def _family(api: Api, seed: dict) -> Who:
    email, password = f"alex-{secrets.token_hex(3)}@example.test", "correct horse battery"
    r = await api.call("POST", "/auth/signup",
                       json={"email": email, "password": password, "name": "Alex Rivers"})
    assert r.status == 201, r.body
    r = await api.call("POST", "/auth/login", json={"email": email, "password": password})
    fam = Who(r.body["token"], r.body["account"])
    assert (await api.buy(fam, 1000)).status == 201
    people = await api.call("GET", f"/facilities/{seed['facility_id']}/people?q=Dana", fam)
    person_id = people.body["people"][0]["id"]
    r = await api.call("POST", "/connections", fam,
                       json={"person_id": person_id, "relationship": "parent"})
    assert r.status == 201, r.body
    return fam


async def _photo_message(api: Api, fam: Who, to: str, body: str) -> tuple[str, str]:
    photo = (await upload(api, fam, garden_photo(), "garden.png")).body["photo_id"]
    r = await api.call("POST", "/messages", fam, key=secrets.token_hex(8),
                       json={"to": to, "body": body, "photo_ids": [photo]})
    assert r.status == 201 and r.body["message"]["status"] == "held", r.body
    return photo, r.body["message"]["id"]


async def test_kiosk_set_up_request_detail_and_photos(sqlite_template: Path,
                                                      tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    app = create_app(test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path),
                     run_migrations=False, clock=running_clock(T0))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, chromium() as browser:
        api = Api(client)
        seed = await seed_kiosk(api, PIN)
        admin = await api.admin()
        staff = await api.staff(admin, seed["facility_id"])
        fam = await _family(api, seed)
        base = str(client.make_url("/")).rstrip("/")
        ctx = await browser.new_context(viewport=KIOSK, locale="en-US",
                                        timezone_id="America/Chicago")
        try:
            kiosk = await ctx.new_page()
            errors: list[str] = []
            kiosk.on("pageerror", lambda e: errors.append(str(e)))

            # --- not set up: the set-up panel alone, no sign-in to try ---
            await kiosk.goto(base + "/static/kiosk.html")
            await expect(kiosk.locator("body")).to_have_attribute("data-ready", "signed-out")
            await expect(kiosk.get_by_role("heading", name="Set up this device")).to_be_visible()
            await expect(kiosk.locator("#login-form")).to_be_hidden()
            await expect(kiosk.get_by_role("button", name="Cancel")).to_be_hidden()
            await expect(kiosk.locator("#device-notice")).to_contain_text("not set up yet")
            await kiosk.get_by_label("Facility id").fill(seed["facility_id"])
            await kiosk.get_by_label("Device token").fill(seed["device"])
            await shot(kiosk, "kiosk-set-up")
            await kiosk.get_by_role("button", name="Save on this device").click()

            # --- set up: a resident sees the sign-in only; set-up is a staff button ---
            await expect(kiosk.locator("#device")).to_be_hidden()
            await expect(kiosk.get_by_label("Inmate number")).to_be_focused()
            staff_setup = kiosk.get_by_role("button", name="Set up this device (staff)")
            await expect(staff_setup).to_be_visible()
            await staff_setup.click()
            await expect(kiosk.get_by_label("Facility id")).to_have_value(seed["facility_id"])
            await expect(kiosk.get_by_label("Device token")).to_have_value("")  # never shown back
            await kiosk.get_by_role("button", name="Cancel").click()
            await expect(kiosk.locator("#device")).to_be_hidden()
            await expect(staff_setup).to_be_focused()
            await kiosk.get_by_label("Inmate number").fill(seed["number"])
            await kiosk.get_by_label("PIN").fill(PIN)
            await shot(kiosk, "kiosk-sign-in-resident")
            await kiosk.get_by_role("button", name="Sign in").click()
            await expect(kiosk.locator("html")).to_have_attribute("data-socket", "online")

            # --- the request says who asks, what they say they are, and when ---
            request = kiosk.locator("#requests li.request")
            await expect(request).to_contain_text("Alex Rivers wants to connect")
            await expect(request).to_contain_text("Says they are your parent.")
            await expect(request).to_contain_text("Asked Mon 2 Mar, 09:10 CST.")
            asked = await request.locator("time").get_attribute("datetime")
            assert timedelta(0) <= datetime.fromisoformat(asked) - T0 < timedelta(seconds=50)
            await shot(kiosk, "kiosk-request-detail")
            await kiosk.get_by_role("button", name="Approve Alex Rivers").click()
            await expect(kiosk.locator("#requests")).to_contain_text("No requests.")

            # --- three photo messages: one approved, one rejected, one still held ---
            person_id = (await kiosk.evaluate("() => window.kinwire.me.id"))
            approved, approved_msg = await _photo_message(api, fam, person_id, "Our garden")
            rejected, rejected_msg = await _photo_message(api, fam, person_id, "Not this one")
            held, _ = await _photo_message(api, fam, person_id, "Still waiting")
            r = await api.call("POST", f"/review/{rejected_msg}/reject", staff,
                               json={"reason": "Not allowed"})
            assert r.status == 200, r.body
            r = await api.call("POST", f"/review/{approved_msg}/approve", staff)
            assert r.status == 200, r.body

            await kiosk.locator("#threads button", has_text="Alex Rivers").click()
            item = kiosk.locator("li.msg", has_text="Our garden")
            await expect(item).to_be_visible()  # arrived live on approval
            thumb = item.get_by_role("img", name="Photo 1 of 1 from Alex Rivers")
            await expect(thumb).to_be_visible()
            await loaded(kiosk, thumb)
            box = await thumb.bounding_box()
            assert box is not None and box["width"] >= 200, f"readable on a kiosk: {box}"
            # Nothing of the rejected or held messages, nor their photos, is on the page.
            await expect(kiosk.locator("#messages li.msg")).to_have_count(1)
            await expect(kiosk.locator("#messages img")).to_have_count(1)
            for hidden in (rejected, held):
                await expect(kiosk.locator(f"[data-photo='{hidden}']")).to_have_count(0)
            statuses = await kiosk.evaluate("""async (ids) => {
                const out = {};
                for (const id of ids) for (const end of ['', '/thumb']) {
                  const r = await fetch(`/api/v1/photos/${id}${end}`);
                  out[id + end] = r.status;
                }
                return out; }""", [approved, rejected, held])
            assert statuses == {approved: 200, approved + "/thumb": 200, rejected: 404,
                                rejected + "/thumb": 404, held: 404, held + "/thumb": 404}
            await shot(kiosk, "kiosk-photos")

            # --- a tap opens the full photo in a modal dialog; Close closes it ---
            await thumb.click()
            dialog = kiosk.get_by_role("dialog", name="Photo 1 of 1 from Alex Rivers")
            await expect(dialog).to_be_visible()
            full = dialog.get_by_role("img", name="Photo 1 of 1 from Alex Rivers")
            assert await loaded(kiosk, full) == 1200, "the full photo, not the thumbnail"
            await expect(dialog.get_by_role("button", name="Close")).to_be_focused()
            await shot(kiosk, "kiosk-photo-open", full_page=False)
            await dialog.get_by_role("button", name="Close").click()
            await expect(dialog).to_be_hidden()
            await expect(item.get_by_role("link", name="Photo 1 of 1 from Alex Rivers")) \
                .to_be_focused()

            # --- on a phone-sized tablet the enlarged photo fits the screen ---
            await kiosk.set_viewport_size(PHONE)
            await thumb.click()
            await expect(dialog).to_be_visible()
            await loaded(kiosk, full)
            fits = await full.evaluate("i => { const r = i.getBoundingClientRect();"
                                       " return [r.left, r.top, r.right, r.bottom,"
                                       " innerWidth, innerHeight]; }")
            left, top, right, bottom, width, height = fits
            assert right > left >= 0 and top >= 0 and right <= width and bottom <= height, fits
            await kiosk.keyboard.press("Escape")
            await expect(dialog).to_be_hidden()
            await kiosk.set_viewport_size(KIOSK)

            assert errors == [], errors

            # --- a wrong device token: the sign-in says so and the set-up comes back ---
            await kiosk.get_by_role("button", name="Log out").click()
            await expect(kiosk.locator("body")).to_have_attribute("data-ready", "signed-out")
            await kiosk.get_by_role("button", name="Set up this device (staff)").click()
            await kiosk.get_by_label("Device token").fill("not-a-real-token")
            await kiosk.get_by_role("button", name="Save on this device").click()
            await kiosk.get_by_label("Inmate number").fill(seed["number"])
            await kiosk.get_by_label("PIN").fill(PIN)
            await kiosk.get_by_role("button", name="Sign in").click()
            await expect(kiosk.locator("#device")).to_be_visible()
            await expect(kiosk.locator("#device-notice")).to_contain_text(
                "not registered for that facility")
            await expect(kiosk.locator("#login-form")).to_be_hidden()
            assert errors == [], errors
        finally:
            await ctx.close()
