"""A video visit in two Chromium browsers (issue 5, "What must be shown"): the family books a
block on the facility's grid (greyed while the balance covers no minute), cancels a booking,
books the block under way; the family and the kiosk join; each sees the other's camera (Chromium's
fake device) through a private coturn on loopback with relay-only ICE; the meter's minutes and the
falling balance show on both screens; the visit ends when the balance runs out, with the reason
on both screens; the ledger agrees. Screens saved under docs/screenshots/ (docs/clients.md)."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import av
import pytest
from aiohttp.test_utils import TestClient, TestServer

from billing import ledger
from server.app import create_app
from server.schema import connections, visits
from server.settings import SettingsError
from store.ids import new_id
from tests.conftest import app_client, fresh_sqlite, test_settings
from tests.support.browser import (
    KIOSK,
    PHONE,
    buy_credits,
    kiosk_sign_in,
    launch,
    require_chromium,
    shot,
)
from tests.support.clock import scene_clock
from tests.support.helpers import Api
from tests.support.turn_server import private_coturn
from tests.support.visit_pages import MEDIA, MINUTE_S, PIN, visit_parties

CREDITS = 300  # six visit minutes at 50
PLAYING = """async () => {
  const v = document.getElementById('visit-remote');
  while (!(v.videoWidth > 0 && v.currentTime > 0)) await new Promise(r => setTimeout(r, 50));
  const t0 = v.currentTime;
  while (v.currentTime < t0 + 0.5) await new Promise(r => setTimeout(r, 50));
  return {width: v.videoWidth, from: t0, to: v.currentTime};
}"""


async def test_a_booked_video_visit_in_two_browsers(sqlite_template: Path,
                                                    tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)
    password = "correct horse battery"
    async with private_coturn() as turn:
        settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path,
                                 visit_minute_s=MINUTE_S, credit_block=150,
                                 turn_secret=turn.secret, turn_urls=(turn.url,),
                                 ice_relay_only=True)
        app = create_app(settings, run_migrations=False, clock=scene_clock())
        async with TestClient(TestServer(app, host="127.0.0.1")) as client, \
                async_playwright() as pw:
            browser = await launch(pw, *MEDIA)
            api = Api(client)
            seed = await visit_parties(api, password)
            base = str(client.make_url("/")).rstrip("/")
            fam_ctx = await browser.new_context(viewport=PHONE, device_scale_factor=1)
            kiosk_ctx = await browser.new_context(viewport=KIOSK)
            try:
                await _scenario(api, seed, base, fam_ctx, kiosk_ctx, password, expect)
            finally:
                await fam_ctx.close()
                await kiosk_ctx.close()
                await browser.close()


async def _scenario(api: Api, seed: dict, base: str, fam_ctx, kiosk_ctx, password: str,
                    expect) -> None:
    fam, kiosk = await fam_ctx.new_page(), await kiosk_ctx.new_page()
    errors: list[str] = []
    for page in (fam, kiosk):
        page.on("pageerror", lambda e: errors.append(str(e)))

    # --- the person signs in on the kiosk: no visits yet ---
    await kiosk_sign_in(kiosk, base, seed, PIN)
    await expect(kiosk.locator("#kiosk-visits")).to_contain_text("No visits booked.")

    # --- the family, with no credits, sees the grid greyed ---
    await fam.goto(base + "/")
    await expect(fam.locator("body")).to_have_attribute("data-ready", "signed-out")
    await fam.locator("#login-email").fill(seed["email"])
    await fam.locator("#login-password").fill(password)
    await fam.get_by_role("button", name="Log in").click()
    await expect(fam.locator("html")).to_have_attribute("data-socket", "online")
    await fam.get_by_role("tab", name="Visits").click()
    await expect(fam.get_by_label("Visit with")).to_have_value(
        await _connection_id(api, seed))
    # The week view (booking.js): today first; the 12:00 block is under way (12:00:20 by the
    # scene clock), so it offers the 29 whole minutes left of it.
    now_slot = fam.locator("#slots section.week-day").first.locator("button.slot").first
    await expect(now_slot).to_contain_text("12:00–12:30")
    await expect(now_slot).to_be_disabled()
    await expect(now_slot).to_contain_text("Buy credits to book")
    await expect(fam.locator("#book-info")).to_contain_text("covers 0 minutes")

    # --- buys credits: back on the grid, the blocks are bookable ---
    await buy_credits(fam, CREDITS)
    await expect(fam.locator("#balance")).to_have_text(f"{CREDITS} credits")
    await fam.get_by_role("tab", name="Visits").click()
    await expect(fam.locator("#book-info")).to_contain_text("covers 6 minutes")
    await expect(now_slot).to_be_enabled()
    await expect(now_slot).to_have_attribute("data-covered", "6")
    await expect(now_slot).to_contain_text("covers 6 of 29 min left")

    # --- books 15:00, cancels it, books the block under way ---
    later = fam.get_by_role("button", name="Book 15:00–15:30 with Dana Rivers", exact=False).first
    await later.click()
    await fam.locator("#book-dialog-ok").click()  # the confirmation (test_browser_booking.py)
    await expect(fam.locator("#book-notice")).to_contain_text("Booked:")
    # The facility's clock, labelled (CDT when a wall-clock scenario lands in summer time).
    await expect(fam.locator("#book-notice")).to_contain_text(
        re.compile(r"15:00–15:30 C[SD]T with Dana Rivers"))
    await fam.get_by_role("button", name="Cancel the visit with Dana Rivers at 15:00").click()
    await expect(fam.locator("#book-notice")).to_have_text(
        re.compile(r"^Cancelled the visit at 15:00 C[SD]T\.$"))
    await expect(fam.locator("#visit-list")).to_contain_text("Visit cancelled by the family.")
    await now_slot.click()
    await fam.locator("#book-dialog-ok").click()
    await expect(fam.locator("#book-notice")).to_contain_text(
        re.compile(r"12:00–12:30 C[SD]T with Dana Rivers"))
    await expect(now_slot).to_have_attribute("data-free", "3")  # one of 4 kiosks taken
    await shot(fam, "family-booking")

    # --- the kiosk sees the booking live; both join ---
    k_join = kiosk.get_by_role("button", name="Join the visit with Alex Rivers at 12:00")
    await expect(k_join).to_be_visible()
    # Told before joining, and during the call, whether the visit is recorded (a direct-mode
    # visit never passes through the server, so it cannot be).
    for page in (kiosk, fam):
        await expect(page.locator("[data-recording-notice]").first).to_have_text(
            "This visit is not recorded.")
    await k_join.click()
    await expect(kiosk.locator("#visit-status")).to_have_text("Waiting for Alex Rivers to join…")
    await expect(kiosk.locator("#visit-recording")).to_have_text("This visit is not recorded.")
    await fam.get_by_role("button", name="Join the visit with Dana Rivers at 12:00").click()
    await expect(fam.locator("#visit-recording")).to_have_text("This visit is not recorded.")

    # --- each side's remote video plays ---
    for page in (fam, kiosk):
        played = await asyncio.wait_for(page.evaluate(PLAYING), 15)
        assert played["width"] > 0 and played["to"] > played["from"], played
        await expect(page.locator("#visit-paid")).not_to_have_attribute("data-paid", "0")
    # The relay-only policy came from the server: the page gathered relay candidates alone,
    # all on the loopback coturn. (A remote candidate may show as peer-reflexive when the
    # peer's check arrives before its trickled candidate; it is still the peer's relay port.)
    assert await fam.evaluate("() => window.kinwireVisit.config.iceTransportPolicy") == "relay"
    local = await fam.evaluate("""async () => {
        const stats = await window.kinwireVisit.pc.getStats(); const out = [];
        stats.forEach(s => { if (s.type === 'local-candidate')
          out.push([s.candidateType, s.address || s.ip]); }); return out; }""")
    assert local and all(c == ["relay", "127.0.0.1"] for c in local), local
    await shot(fam, "family-visit")
    await shot(kiosk, "kiosk-visit")

    # --- the meter ticks on both screens until the balance runs out ---
    for page, text in ((fam, "Visit ended: your balance ran out."),
                       (kiosk, "Visit ended: the family's balance ran out.")):
        ended = page.locator("#visit-ended")
        await expect(ended).to_have_attribute("data-reason", "balance_exhausted",
                                              timeout=30_000)
        await expect(ended).to_have_text(text)
        await expect(page.locator("#visit-warning")).to_have_attribute("data-warning",
                                                                        "low_balance")
        await expect(page.locator("#visit-paid")).to_have_text("6")
        await expect(page.locator("#visit-balance")).to_have_attribute("data-balance", "0")
    await expect(fam.locator("#balance")).to_have_text("0 credits")
    await shot(fam, "visit-ended")
    expected = [{"paid": k, "balance": CREDITS - 50 * k} for k in range(1, 7)]
    for page in (fam, kiosk):
        ticks = await page.evaluate("() => window.kinwireVisit.ticks")
        shown = [t for t in ticks if t["paid"] > 0]
        # A pause and resume repeats the current minute's tick; each minute shows once more.
        assert [t for i, t in enumerate(shown) if i == 0 or t != shown[i - 1]] == expected, ticks

    # --- the ledger agrees with the screens ---
    family = seed["family"]
    visit_id = await fam.evaluate("() => window.kinwireVisit.visit.id")
    async with api.ctx.store.read() as conn:
        rows = await ledger.statement(conn, family.id, limit=100)
        assert await ledger.check_invariants(conn) == []
        row = (await conn.execute(visits.select().where(visits.c.id == visit_id))).first()
    minutes = sorted((t for t in rows if t.kind == "visit_minute" and t.ref == visit_id),
                     key=lambda t: t.seq)
    assert [t.key for t in minutes] == [f"visit:{visit_id}:minute:{k}" for k in range(1, 7)]
    assert [t.amount for t in minutes] == [50] * 6
    assert (row.status, row.end_reason) == ("ended", "balance_exhausted")
    me = await api.call("GET", "/me", family)
    assert me.body["balance"] == 0

    # --- back to the app: the list shows why it ended, on both ---
    await fam.get_by_role("button", name="Back").click()
    await expect(fam.locator("#visit-list li[data-status=ended]")).to_contain_text(
        "Visit ended: the balance ran out.")
    await kiosk.get_by_role("button", name="Back").click()
    await expect(kiosk.locator("#kiosk-visits li[data-status=ended]")).to_contain_text(
        "Visit ended: the balance ran out.")
    assert errors == [], errors


async def _connection_id(api: Api, seed: dict) -> str:
    r = await api.call("GET", "/connections", seed["family"])
    return r.body["connections"][0]["id"]


async def test_ice_transport_policy_follows_the_setting(sqlite_template: Path,
                                                        tmp_path: Path) -> None:
    """GET /visits/{id}/ice says "relay" only with KINWIRE_ICE_RELAY_ONLY."""
    turn = {"turn_secret": "s3cret", "turn_urls": ("turn:127.0.0.1:3478?transport=udp",)}
    seen = []
    for relay_only in (False, True):
        db = fresh_sqlite(sqlite_template, tmp_path)
        async with app_client(db, tmp_path, ice_relay_only=relay_only, **turn) as client:
            api = Api(client)
            admin = await api.admin()
            facility_id = await api.facility(admin)
            person = await api.person(await api.staff(admin, facility_id), facility_id)
            family = await api.family()
            await api.connect(family, person)
            visit_id, now = new_id("vis"), api.ctx.clock()
            async with api.ctx.store.write() as conn:
                con = (await conn.execute(connections.select())).first()
                await conn.execute(visits.insert().values(
                    id=visit_id, facility_id=facility_id, connection_id=con.id,
                    family_id=family.id, person_id=person.id, booked_by=family.id,
                    start_at=now - timedelta(minutes=1), end_at=now + timedelta(minutes=29),
                    blocks=1, minute_price=50, media="direct", record=False,
                    status="scheduled", created_at=now, updated_at=now))
            for who in (family, person):
                r = await api.call("GET", f"/visits/{visit_id}/ice", who)
                assert r.status == 200, r.body
                assert r.body["ice_servers"][0]["urls"] == list(turn["turn_urls"])
                seen.append(r.body["ice_transport_policy"])
    assert seen == ["all", "all", "relay", "relay"]
    # And relay-only without a TURN server is refused at start.
    with pytest.raises(SettingsError, match="KINWIRE_ICE_RELAY_ONLY"):
        test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path, ice_relay_only=True)


async def test_a_relayed_recorded_visit_in_two_browsers(sqlite_template: Path,
                                                        tmp_path: Path) -> None:
    """Relay mode with Chromium on both sides (fake cameras): both are told the visit is
    recorded and may be monitored, before joining and during the call; both remote videos play
    through the server (which forwards the browsers' VP8 and Opus as they come); the family
    hangs up; the recording is kept with both parties' streams, as the browsers sent them."""
    require_chromium()
    from datetime import datetime, time

    from playwright.async_api import async_playwright, expect

    from tests.integration.test_relay import recorded
    from tests.support.clock import ZONE

    expect.set_options(timeout=15_000)
    password = "correct horse battery"
    clock = scene_clock()
    notice = "This visit is recorded and may be monitored by facility staff."
    async with private_coturn() as turn:
        db = fresh_sqlite(sqlite_template, tmp_path)
        settings = test_settings(db, tmp_path, turn_secret=turn.secret, turn_urls=(turn.url,),
                                 ice_relay_only=True, relay_loopback_only=True)
        app = create_app(settings, run_migrations=False, clock=clock)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client, \
                async_playwright() as pw:
            browser = await launch(pw, *MEDIA)
            api = Api(client)
            seed = await visit_parties(api, password)
            admin = await api.admin()
            r = await api.call("PATCH", f"/facilities/{seed['facility_id']}", admin,
                               json={"settings": {"media": "relay"}})
            assert r.status == 200, r.body
            family = seed["family"]
            assert (await api.buy(family, 500)).status == 201
            start = datetime.combine(clock().astimezone(ZONE).date(), time(12, 0), ZONE)
            r = await api.call("POST", "/visits", family, json={
                "connection_id": await _connection_id(api, seed), "start": start.isoformat()})
            assert r.status == 201, r.body
            visit = r.body["visit"]
            assert (visit["media"], visit["record"]) == ("relay", True)
            base = str(client.make_url("/")).rstrip("/")
            fam_ctx = await browser.new_context(viewport=PHONE)
            kiosk_ctx = await browser.new_context(viewport=KIOSK)
            try:
                fam, kiosk = await fam_ctx.new_page(), await kiosk_ctx.new_page()
                errors: list[str] = []
                for page in (fam, kiosk):
                    page.on("pageerror", lambda e: errors.append(str(e)))
                await kiosk_sign_in(kiosk, base, seed, PIN)
                await fam.goto(base + "/")
                await fam.locator("#login-email").fill(seed["email"])
                await fam.locator("#login-password").fill(password)
                await fam.get_by_role("button", name="Log in").click()
                await expect(fam.locator("html")).to_have_attribute("data-socket", "online")
                await fam.get_by_role("tab", name="Visits").click()
                for page in (kiosk, fam):
                    await expect(page.locator(f"[data-recording-notice='{visit['id']}']")) \
                        .to_have_text(notice)
                await kiosk.get_by_role("button",
                                        name="Join the visit with Alex Rivers at 12:00").click()
                await fam.get_by_role("button",
                                      name="Join the visit with Dana Rivers at 12:00").click()
                for page in (fam, kiosk):
                    await expect(page.locator("#visit-recording")).to_have_text(notice)
                    played = await asyncio.wait_for(page.evaluate(PLAYING), 20)
                    assert played["width"] > 0 and played["to"] > played["from"], played
                # Each browser's peer is the server: its answer's fingerprint is not the other
                # browser's.
                prints = [await p.evaluate(
                    "() => window.kinwireVisit.pc.remoteDescription.sdp.match("
                    "/a=fingerprint:\\S+ (\\S+)/)[1]") for p in (fam, kiosk)]
                own = [await p.evaluate(
                    "() => window.kinwireVisit.pc.localDescription.sdp.match("
                    "/a=fingerprint:\\S+ (\\S+)/)[1]") for p in (fam, kiosk)]
                assert prints[0] != own[1] and prints[1] != own[0]
                await asyncio.sleep(2.0)
                await fam.get_by_role("button", name="Hang up").click()
                await expect(kiosk.locator("#visit-ended")).to_have_attribute(
                    "data-reason", "hung_up")
                assert errors == [], errors
            finally:
                await fam_ctx.close()
                await kiosk_ctx.close()
                await browser.close()
        record = await recorded(db, visit["id"])
    with av.open(str(tmp_path / "recordings" / record.location)) as container:
        assert [s.codec_context.name for s in container.streams] == \
            ["vp8", "vp8", "opus", "opus"]
        packets = [0, 0, 0, 0]
        for packet in container.demux():
            if packet.size:
                packets[packet.stream.index] += 1
    assert record.duration_ms >= 2000 and min(packets) > 0, (record.duration_ms, packets)
