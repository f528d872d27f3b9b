"""More of issue 5 in Debian's Chromium (docs/clients.md):

- the family page on the msgpack codec keeps a conversation whole across a real server restart
  (a `kinwire serve` subprocess on a SQLite file, stopped and started on the same port): it shows
  the outage, resumes from its last seq by `sync` (no reload), and the thread holds every message
  exactly once, in order, including those sent over HTTP while it was away; the person's typing
  shows; "Show older messages" pages a thread back;
- the staff console: an administrator changes the facility's settings (saved, audited, and the
  family's price follows), staff review a message the new setting holds; the family gives
  credits to the person and reads the statement, paged, with a running balance; the purchase
  terms the page shows come from the server (GET /pricing), not from constants.

Screens saved: family-reconnecting, staff-settings, staff-review, staff-audit, family-gift,
family-statement. (A held photo rejected in the console: tests/browser/test_browser.py.)
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.conftest import fresh_sqlite, test_settings
from tests.support.browser import PHONE, chromium, require_chromium, shot
from tests.support.helpers import Api, Who
from tests.support.pages import (
    PASSWORD,
    family_account,
    log_in,
    note_watch_streams,
    watch_plays_new_streams,
)
from tests.support.processes import cli_env, free_port, wait_ready


class Serve:
    """`python -m server` (kinwire serve) on a fixed port and a SQLite file; restartable."""

    def __init__(self, db: str, data_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = cli_env(data_dir, DATABASE_URL=db, KINWIRE_LOG_LEVEL="WARNING",
                           KINWIRE_LOG_FORMAT="text")
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        await wait_ready(self.base, self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)  # graceful: sockets are closed with 1012
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output.append(out)
        self.proc = None


async def test_reconnect_across_server_restart_msgpack(sqlite_template: Path,
                                                       tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    db = fresh_sqlite(sqlite_template, tmp_path)
    # --- the people, made through the API of an in-process app on the same SQLite file ---
    app = create_app(test_settings(db, tmp_path), run_migrations=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        api = Api(client)
        admin = await api.admin()
        facility_id = await api.facility(admin)
        person = await api.person(await api.staff(admin, facility_id), facility_id)
        family, email = await family_account(api, "Alex Rivers")
        await api.connect(family, person)
        assert (await api.buy(family, 500)).status == 201
        r = await api.call("POST", "/gifts", family, json={"to": person.id, "credits": 300},
                           key="gift-1")
        assert r.status == 201, r.body  # the person can write without sending collect

    server = Serve(db, tmp_path)
    await server.start()
    frames: list[tuple[int, type]] = []  # (which socket, payload type) of every frame received
    try:
        async with chromium() as browser, aiohttp.ClientSession() as http:
            async def person_sends(body: str) -> str:
                async with http.post(server.base + "/api/v1/messages", json={
                        "to": family.id, "body": body},
                        headers={"Authorization": f"Bearer {person.token}",
                                 "X-Device-Token": person.device,  # a kiosk's session
                                 "Idempotency-Key": secrets.token_hex(8)}) as resp:
                    assert resp.status == 201, await resp.text()
                    return (await resp.json())["message"]["id"]

            ctx = await browser.new_context(viewport=PHONE, device_scale_factor=1)
            page = await ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("websocket", lambda ws: ws.on(
                "framereceived", lambda payload: frames.append((id(ws), type(payload)))))

            await log_in(page, server.base, email, PASSWORD, "/?codec=msgpack")
            html = page.locator("html")
            await expect(html).to_have_attribute("data-socket", "online")
            await expect(html).to_have_attribute("data-socket-codec", "msgpack")
            assert await page.evaluate("window.kinwire.socket.ws.protocol") == "kinwire.v1.msgpack"
            await page.locator("#threads button", has_text="Pat Person").click()
            bodies = page.locator("#messages li.msg p.body")

            # --- live both ways before the outage; the person's typing shows ---
            await person_sends("one")
            await expect(bodies).to_have_text(["one"])
            async with http.ws_connect(server.base.replace("http", "ws") + "/ws",
                                       protocols=("kinwire.v1.json",)) as ws:
                await ws.send_str(json.dumps({"id": 1, "op": "auth",
                                              "args": {"token": person.token,
                                                       "device_token": person.device}}))
                assert "ok" in json.loads((await ws.receive()).data)
                await ws.send_str(json.dumps({"id": 2, "op": "typing",
                                              "args": {"to": family.id}}))
                # A push may come first (the family's page opening "one" sends the person a
                # read receipt): the reply is the frame with id 2.
                reply = json.loads((await ws.receive()).data)
                while reply.get("id") != 2:
                    reply = json.loads((await ws.receive(timeout=10)).data)
                assert reply["ok"] == {"delivered": True}
            await expect(page.locator("#typing")).to_have_text("Pat Person is typing…")
            await page.get_by_role("textbox", name="Message").fill("two")
            await page.get_by_role("button", name="Send (50 credits)").click()
            await expect(bodies).to_have_text(["one", "two"])
            await person_sends("three")
            await expect(bodies).to_have_text(["one", "two", "three"])
            await expect(page.locator("#typing")).to_have_text("")  # their message ends it

            # Count resets: a resumed socket must catch up by sync, never by reloading.
            before = await page.evaluate("""() => { const s = window.kinwire.socket;
                window.resets = 0; const f = s.onReset;
                s.onReset = async () => { window.resets += 1; return f(); };
                s.backoffMinMs = 60000; s.backoffMaxMs = 60000;  // the test says when
                return s.lastSeq; }""")

            # --- the server restarts: the page shows it is offline ---
            server.stop()
            await expect(html).to_have_attribute("data-socket", "offline")
            await expect(page.locator(".conn")).to_have_text("Offline – reconnecting")
            await shot(page, "family-reconnecting")
            await server.start()

            # --- while the page is away: two from the person, one from the family's page ---
            await person_sends("four")
            await person_sends("five")
            await page.get_by_role("textbox", name="Message").fill("six")
            await page.get_by_role("button", name="Send (50 credits)").click()
            await expect(bodies).to_have_text(["one", "two", "three", "six"])
            assert await html.get_attribute("data-socket") == "offline"

            # --- the network is back: it reconnects now and resumes from its last seq ---
            await page.evaluate("window.dispatchEvent(new Event('online'))")
            await expect(html).to_have_attribute("data-socket", "online")
            everything = ["one", "two", "three", "four", "five", "six"]
            await expect(bodies).to_have_text(everything)
            await person_sends("seven")  # and live again afterwards
            await expect(bodies).to_have_text([*everything, "seven"])
            await expect(page.locator("#messages li.msg")).to_have_count(7)
            assert await page.evaluate("window.resets") == 0, "caught up by reloading"
            assert await page.evaluate("window.kinwire.socket.lastSeq") > before
            assert await page.evaluate("window.kinwire.socket.ws.protocol") \
                == "kinwire.v1.msgpack"
            await expect(page.locator("#balance")).to_have_text("100 credits")  # 500 - 300 - 2 x 50

            # --- "Show older messages" (GET /messages?with=) refills a thread whose start was
            # never loaded: here the three oldest are dropped from the page's memory ---
            await page.evaluate("""() => { const box = window.kinwire.inbox;
                const t = box.thread(window.kinwire.current);
                for (const m of t.slice(0, 3)) box.byId.delete(m.id);
                window.kinwire.historyComplete = false; }""")  # it no longer holds it all
            await page.get_by_role("button", name="← All contacts").click()  # a phone
            await page.locator("#threads button", has_text="Pat Person").click()
            await expect(bodies).to_have_text(["four", "five", "six", "seven"])
            await page.get_by_role("button", name="Show older messages").click()
            await expect(bodies).to_have_text([*everything, "seven"])
            # Both folders answered a short page: the whole history is there, no more button.
            await expect(page.get_by_role("button", name="Show older messages")).to_be_hidden()

            # --- msgpack.js against the Python msgpack the server uses, both directions, on
            # every size class (fix, 8, 16, 32 bits) of ints, strings, arrays and maps ---
            sample = {"ints": [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 - 1,
                               -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1,
                               -2**53 + 1],
                      "floats": [0.5, -1.25, 1e300], "flags": [True, False, None],
                      "strs": ["", "é✓", "x" * 31, "y" * 32, "z" * 255, "w" * 256, "v" * 70000],
                      "list": list(range(20)), "map": {f"k{i}": i for i in range(20)},
                      "nested": {"a": [{"b": [[]]}, {}]}}
            packed = msgpack.packb(sample, use_bin_type=True)
            codec = "import('/static/js/msgpack.js')"
            unhex = "new Uint8Array(x.match(/../g).map(b => parseInt(b, 16)))"
            decoded = await page.evaluate(
                f"async x => (await {codec}).decode({unhex})", packed.hex())
            assert decoded == sample
            encoded = await page.evaluate(f"""async v => Array.from((await {codec}).encode(v),
                b => b.toString(16).padStart(2, '0')).join('')""", sample)
            assert msgpack.unpackb(bytes.fromhex(encoded), raw=False, strict_map_key=True,
                                   max_bin_len=0) == sample
            refused = await page.evaluate(f"""async x => {{ const m = await {codec};
                try {{ m.decode({unhex}); return null; }}
                catch (e) {{ return e instanceof m.MsgpackError; }} }}""", packed[:-3].hex())
            assert refused is True, "a truncated frame is refused"
            await ctx.close()
            assert errors == [], errors
    finally:
        server.stop()
    sockets = {which for which, _ in frames}
    assert len(sockets) == 2, f"one socket before the restart and one after: {sockets}"
    assert frames and all(kind is bytes for _, kind in frames), "every frame msgpack (binary)"


async def _rows(page: Any, selector: str) -> list[list[str]]:
    return await page.eval_on_selector_all(
        selector, "rows => rows.map(r => [...r.cells].slice(1).map(c => c.textContent.trim()))")


async def test_staff_settings_review_audit_and_family_gift_statement(sqlite_template: Path,
                                                                    tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    # Purchase terms unlike the defaults: the page must read them from the server.
    settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path,
                             credit_block=1000, purchase_fee_cents=99, photos_per_message_max=3)
    app = create_app(settings, run_migrations=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, chromium() as browser:
        api = Api(client)
        admin = await api.admin()
        facility_id = await api.facility(admin)  # review_mode instant, message 50
        staff_email = f"officer-{secrets.token_hex(3)}@example.test"
        r = await api.call("POST", f"/facilities/{facility_id}/staff", admin, json={
            "email": staff_email, "password": "staff password", "name": "Officer Lane"})
        assert r.status == 201, r.body
        r = await api.call("POST", "/auth/login",
                           json={"email": staff_email, "password": "staff password"})
        person = await api.person(Who(r.body["token"], r.body["account"]), facility_id)
        family, email = await family_account(api, "Sam Rivers")
        await api.connect(family, person)
        assert (await api.buy(family, 1000)).status == 201

        base = str(client.make_url("/")).rstrip("/")
        contexts = [await browser.new_context(viewport=PHONE, device_scale_factor=1)
                    for _ in range(3)]
        boss, fam, desk = [await c.new_page() for c in contexts]
        errors: list[str] = []
        for page in (boss, fam, desk):
            page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            # --- an administrator holds every message for review and lowers the price ---
            await log_in(boss, base, admin.account["email"], "admin password",
                          "/static/staff.html")
            await expect(boss.get_by_label("Facility (administrators choose)")).to_have_value(
                facility_id)
            await expect(boss.get_by_label("Message price (credits)")).to_have_value("50")
            await boss.get_by_label("Message review").select_option("hold")
            await boss.get_by_label("Message price (credits)").fill("40")
            await boss.get_by_role("button", name="Save settings").click()
            await expect(boss.locator("#settings-notice")).to_have_text(
                "Saved: review mode, prices.")
            await expect(boss.locator("#audit-rows li").first).to_contain_text(
                "Administrator Admin changed the facility's settings (prices, review mode)")
            await shot(boss, "staff-settings")
            r = await api.call("GET", f"/facilities/{facility_id}", admin)
            saved = r.body["facility"]["settings"]
            assert (saved["review_mode"], saved["prices"]["message"]) == ("hold", 40), saved
            assert saved["prices"]["photo"] == 100  # only what changed was sent

            # --- the family: terms from the server, the new price, the message held ---
            await log_in(fam, base, email, PASSWORD)
            await expect(fam.locator("html")).to_have_attribute("data-socket", "online")
            await fam.get_by_role("tab", name="Buy credits").click()
            await expect(fam.get_by_label("Credits", exact=True).locator("option").first) \
                .to_have_text("1000 credits")
            await expect(fam.locator("#buy-summary")).to_have_text(
                "1000 credits: $10.00 + $0.99 fee = $10.99 total")
            # The family's facility's price (40), not the server's default (50), nor a copy
            # of it in the page's markup.
            await expect(fam.locator("#buy-block")).to_have_text("1000")
            await expect(fam.locator("#msg-price")).to_have_text("40")
            await fam.get_by_role("tab", name="Messages").click()
            await fam.locator("#threads button", has_text="Pat Person").click()
            await expect(fam.locator("#compose-price")).to_have_text(
                "Sending costs 40 credits (balance after: 960).")
            # The server's photo limit (3 here, 5 by default), not a copy of the default.
            await expect(fam.locator("#compose-photos-hint")).to_contain_text("up to 3;")
            await fam.get_by_role("textbox", name="Message").fill("Hello under the new rules")
            await fam.get_by_role("button", name="Send (40 credits)").click()
            mine = fam.locator("li.msg.mine", has_text="new rules")
            await expect(mine).to_contain_text("Held for review")

            # --- gives the person 100 credits ---
            await fam.get_by_role("tab", name="Give credits").click()
            await expect(fam.get_by_label("Give to")).to_have_value(person.id)
            await fam.get_by_label("Credits to give").fill("100")
            await expect(fam.locator("#gift-summary")).to_have_text(
                "Your balance after: 860 credits.")
            await shot(fam, "family-gift")
            await fam.get_by_role("button", name="Give 100 credits").click()
            await expect(fam.locator("#gift-notice")).to_have_text(
                "Gave 100 credits to Pat Person.")
            await expect(fam.locator("#balance")).to_have_text("860 credits")
            assert (await api.call("GET", "/me", person)).body["balance"] == 100

            # --- staff approve it in the console; the audit log shows both decisions ---
            await log_in(desk, base, staff_email, "staff password", "/static/staff.html")
            item = desk.locator("#queue li", has_text="new rules")
            await expect(item).to_contain_text("Sam Rivers")
            await expect(item).to_contain_text("40 credits")
            await expect(desk.locator("#review-count")).to_have_text("1")
            await expect(desk.get_by_label("Message price (credits)")).to_be_disabled()
            await shot(desk, "staff-review")
            await item.get_by_role("button", name="Approve message from Sam Rivers").click()
            await expect(desk.locator("#queue li")).to_have_count(0)
            actions = desk.locator("#audit-rows li")
            await expect(actions.first).to_contain_text(
                "Officer Lane approved a message from Sam Rivers to Pat Person")
            await expect(desk.locator("#audit-rows li[data-action='facility.update']")) \
                .to_have_count(1)
            await desk.locator("#audit").scroll_into_view_if_needed()
            await shot(desk, "staff-audit")
            await expect(mine.locator("[data-receipt]")).to_have_text("Delivered")  # live

            # --- the statement, two lines a page, with the balance after each ---
            await fam.evaluate("window.kinwire.statementPage = 2")
            await fam.get_by_role("tab", name="Statement").click()
            await expect(fam.locator("#statement-balance")).to_have_text("860 credits")
            lines = fam.locator("#statement-rows tr")
            await expect(lines).to_have_count(2)
            assert await _rows(fam, "#statement-rows tr") == [
                ["Gift to Pat Person", "−100", "860"],
                ["Message to Pat Person", "−40", "960"]]
            await fam.get_by_role("button", name="Show older entries").click()
            await expect(lines).to_have_count(3)
            assert (await _rows(fam, "#statement-rows tr"))[2] == [
                "Bought credits: $10.00 + $0.99 fee = $10.99 (card ending 4242)", "+1000", "1000"]
            await expect(fam.get_by_role("button", name="Show older entries")).to_be_hidden()
            await shot(fam, "family-statement")
            assert errors == [], errors
        finally:
            for c in contexts:
                await c.close()


async def test_staff_watch_a_relayed_visit_in_the_console(sqlite_template: Path,
                                                          tmp_path: Path) -> None:
    """Relay mode: two aiortc parties in a call through the server (a `kinwire serve` process
    on SQLite, a private coturn on loopback); a staff member watches it in the console, sees
    both cameras; its own socket is broken and, back, the console offers again and watches on
    (issue 15); then it ends the visit; the watch is in the audit log. (Several processes and Redis
    are tests/integration/test_relay.py's part.)"""
    require_chromium()
    import asyncio

    from playwright.async_api import expect

    from tests.integration.test_relay import (
        FAMILY_SIZE,
        PERSON_SIZE,
        RELAY,
        STAFF_PASSWORD,
        new_staff,
        party,
    )
    from tests.integration.test_visit_e2e import account_id, start_both, visit_now
    from tests.support.nodes import cluster, make_pair
    from tests.support.turn_server import private_coturn

    expect.set_options(timeout=10_000)
    db = fresh_sqlite(sqlite_template, tmp_path)
    async with private_coturn() as turn, \
            cluster(db, "", tmp_path, n=1, KINWIRE_TURN_SECRET=turn.secret,
                    KINWIRE_TURN_URLS=turn.url, **RELAY) as (node,), \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http, \
            chromium() as browser:
        a = b = node
        family_token, person_token = await make_pair(http, a, b, db)
        family_id = await account_id(http, a, family_token)
        visit_id, facility_id = await visit_now(db, family_id, media="relay", record=False)
        email = await new_staff(db, facility_id, "Officer Watts")
        family = party(a, family_token, visit_id, FAMILY_SIZE)
        person = party(b, person_token, visit_id, PERSON_SIZE)
        ctx = await browser.new_context(viewport={"width": 1024, "height": 900})
        try:
            await start_both(family, person)
            desk = await ctx.new_page()
            # The page's WebSockets, so that the test can break them as a network would.
            await desk.add_init_script("""(() => {
                const Native = window.WebSocket;
                window.liveSockets = [];
                window.WebSocket = class extends Native {
                  constructor(...args) { super(...args); window.liveSockets.push(this); }
                };
              })()""")
            errors: list[str] = []
            desk.on("pageerror", lambda e: errors.append(str(e)))
            await log_in(desk, b.base, email, STAFF_PASSWORD, "/static/staff.html")
            item = desk.locator(f"#visit-list li[data-visit='{visit_id}']")
            await expect(item).to_have_attribute("data-status", "live")
            await item.locator("button", has_text="Watch").click()
            await expect(desk.locator("#socket-state")).to_have_text("Online")
            await desk.wait_for_function(
                """() => [...document.querySelectorAll('.watch video')].every(
                     v => v.videoWidth > 0 && v.currentTime > 0.5)""", timeout=20_000)
            sizes = await desk.eval_on_selector_all(
                ".watch video", "vs => vs.map(v => [v.videoWidth, v.videoHeight])")
            assert sizes == [list(FAMILY_SIZE), list(PERSON_SIZE)], "family, then resident"
            await expect(desk.locator("#watch-notice")).to_have_text("Live.")
            await expect(desk.locator("#audit-rows li[data-action='visit.watch']")) \
                .to_have_count(1)
            await shot(desk, "staff-watch")

            # The console's own socket dies (a network blip, or its process gone, possibly
            # with the relay): when it is back, the console offers again and keeps watching,
            # on a new peer connection (the old pictures' streams are replaced).
            await note_watch_streams(desk)
            # Every state the console shows from here, kept: a reconnection quicker than
            # Playwright's polling (a few hundred ms apart on a loaded host) shows "Online"
            # again before a poll could see it gone (failed a full run so, 2026-12-07).
            await desk.evaluate("""() => {
                const state = document.querySelector('#socket-state');
                window.socketStates = [];
                new MutationObserver(() => window.socketStates.push(state.dataset.socketState))
                  .observe(state, {attributes: true, attributeFilter: ['data-socket-state']});
              }""")
            await desk.evaluate("() => window.liveSockets.forEach(ws => ws.close())")
            await desk.wait_for_function(
                "() => window.socketStates.some(s => s !== 'online')", timeout=10_000)
            await expect(desk.locator("#socket-state")).to_have_text("Online")
            await watch_plays_new_streams(desk)
            await expect(desk.locator("#watch-notice")).to_have_text("Live.")
            await item.locator("button", has_text="End").click()
            await desk.get_by_role("dialog").get_by_label("Reason").fill("checking the relay")
            await desk.get_by_role("button", name="End visit").click()
            async with asyncio.timeout(10):
                ended = await family.wait_event("visit.ended")
            assert ended["reason"] == "staff_ended"
            await expect(desk.locator("#watch-notice")).to_have_text(
                "The visit ended (ended by staff).")
            assert errors == [], errors
        finally:
            await ctx.close()
            await family.close()
            await person.close()


async def test_staff_play_a_relayed_visits_recording_in_the_console(sqlite_template: Path,
                                                                    tmp_path: Path) -> None:
    """Relay mode, recorded: two aiortc parties through a `kinwire serve` process (forwarding,
    the recording remuxed), staff end it; the console lists the recording and Chromium's
    <video> plays it from /recordings/{id}/media (byte ranges) with the expected duration and
    the family's picture; each request for the file is in the audit log."""
    require_chromium()
    import asyncio

    from playwright.async_api import expect

    from tests.integration.test_relay import (
        FAMILY_SIZE,
        PERSON_SIZE,
        RELAY,
        STAFF_PASSWORD,
        new_staff,
        party,
        recorded,
    )
    from tests.integration.test_visit_e2e import account_id, start_both, visit_now
    from tests.support.nodes import cluster, make_pair
    from tests.support.turn_server import private_coturn

    expect.set_options(timeout=10_000)
    db = fresh_sqlite(sqlite_template, tmp_path)
    async with private_coturn() as turn, \
            cluster(db, "", tmp_path, n=1, KINWIRE_TURN_SECRET=turn.secret,
                    KINWIRE_TURN_URLS=turn.url, **RELAY) as (node,), \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http, \
            chromium() as browser:
        family_token, person_token = await make_pair(http, node, node, db)
        family_id = await account_id(http, node, family_token)
        visit_id, facility_id = await visit_now(db, family_id, media="relay", record=True)
        email = await new_staff(db, facility_id, "Officer Reyes")
        family = party(node, family_token, visit_id, FAMILY_SIZE)
        person = party(node, person_token, visit_id, PERSON_SIZE)
        ctx = await browser.new_context(viewport={"width": 1024, "height": 900})
        try:
            await start_both(family, person)
            async with asyncio.timeout(20):
                await family.wait_frames("video", 60)  # about 4 s at 15 frames/s
            desk = await ctx.new_page()
            errors: list[str] = []
            desk.on("pageerror", lambda e: errors.append(str(e)))
            await log_in(desk, node.base, email, STAFF_PASSWORD, "/static/staff.html")
            item = desk.locator(f"#visit-list li[data-visit='{visit_id}']")
            await item.locator("button", has_text="End").click()
            await desk.get_by_role("dialog").get_by_label("Reason").fill("end of the test")
            await desk.get_by_role("button", name="End visit").click()
            record = await recorded(db, visit_id)
            await desk.locator("#recordings-refresh").click()
            row = desk.locator(f"#recording-list li[data-recording='{record.id}']")
            await row.locator("button", has_text="Play").click()
            await desk.wait_for_function(
                """() => { const v = document.getElementById('recording-player');
                           return v.readyState >= 2 && isFinite(v.duration)
                                  && v.videoWidth > 0; }""",
                timeout=20_000)
            duration, width, height = await desk.eval_on_selector(
                "#recording-player", "v => [v.duration, v.videoWidth, v.videoHeight]")
            assert abs(duration - record.duration_ms / 1000) <= 1.0, (duration, record.duration_ms)
            assert (width, height) == FAMILY_SIZE, "the first video stream: the family's"
            await desk.locator("#audit-refresh").click()
            await expect(desk.locator("#audit-rows li[data-action='recording.play']").first) \
                .to_be_visible()
            assert errors == [], errors
        finally:
            await ctx.close()
            await family.close()
            await person.close()
