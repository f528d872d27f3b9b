"""Kiosk sessions are bound to their device, and the kiosk page signs out when left alone
(issue 17, finding 7).

Adversaries: someone who copied a kiosk session's token (from the kiosk's storage, a log, a
screenshot) and uses it from their own machine, with no device token or another kiosk's, over
HTTP and over the socket (cookie or `auth {token}`); a revoked kiosk; the next person at a
shared kiosk, reading what the last one left open (Chromium, idle time shortened).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from server.app import create_app
from server.schema import devices
from tests.conftest import fresh_sqlite, test_settings
from tests.support.browser import KIOSK, chromium, kiosk_sign_in, require_chromium, seed_kiosk
from tests.support.helpers import Api, Who

PIN = "2468"


async def _kiosk_person(api: Api) -> tuple[Who, str]:
    """A person signed in on kiosk 1 (a Who carrying its device); kiosk 2's token."""
    admin = await api.admin()
    facility = await api.facility(admin)
    staff = await api.staff(admin, facility)
    number, device = await api.kiosk_person(staff, facility, PIN)
    r = await api.call("POST", f"/facilities/{facility}/devices", staff, json={"label": "k2"})
    return await api.kiosk_login(facility, number, PIN, device), r.body["device_token"]


async def _ws_auth(api: Api, args: dict, headers: dict | None = None) -> tuple[dict, int | None]:
    api.client.session.cookie_jar.clear()
    ws = await api.client.ws_connect("/ws", protocols=("kinwire.v1.json",),
                                     headers=headers or {})
    await ws.send_str(json.dumps({"id": 1, "op": "auth", "args": args}))
    msg = await ws.receive(timeout=5)
    reply = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else {}
    if "error" in reply:
        await ws.receive(timeout=5)  # the close that follows the refusal
    else:
        await ws.close()
    return reply, ws.close_code


async def test_a_kiosk_token_without_its_device_is_refused(api: Api) -> None:
    person, other_kiosk = await _kiosk_person(api)
    api.client.session.cookie_jar.clear()  # a thief has the token, not the kiosk's cookies
    bare = Who(person.token, person.account)
    for who, headers in ((bare, {}), (bare, {"X-Device-Token": other_kiosk}),
                         (bare, {"X-Device-Token": "not-a-device"})):
        r = await api.call("GET", "/me", who, headers=headers)
        assert r.status == 401 and r.code == "device_required", (headers, r)
        r = await api.call("POST", "/messages", who, key="k", headers=headers,
                           json={"to": person.id, "body": "x"})
        assert r.status == 401, r
    assert (await api.call("GET", "/me", person)).status == 200  # with its own device
    # The socket: `auth {token}` alone or with another kiosk's token is refused 4001.
    for args in ({"token": person.token}, {"token": person.token, "device_token": other_kiosk}):
        reply, code = await _ws_auth(api, args)
        assert reply["error"]["code"] == "device_required" and code == 4001, (args, reply)
    reply, _ = await _ws_auth(api, {"token": person.token, "device_token": person.device})
    assert "ok" in reply, reply
    reply, _ = await _ws_auth(api, {"token": person.token}, {"X-Device-Token": person.device})
    assert "ok" in reply, reply


async def test_the_session_cookie_without_the_device_cookie_is_refused(api: Api) -> None:
    person, _ = await _kiosk_person(api)
    api.client.session.cookie_jar.clear()
    session_only = {"Cookie": f"kw_session={person.token}"}
    async with api.client.get("/api/v1/me", headers=session_only) as resp:
        assert resp.status == 401
    both = {"Cookie": f"kw_session={person.token}; kw_device={person.device}"}
    async with api.client.get("/api/v1/me", headers=both) as resp:
        assert resp.status == 200 and (await resp.json())["kiosk"]["idle_sign_out_s"] == 120
    ws = await api.client.ws_connect("/ws", headers=session_only)
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and \
        ws.close_code == 4001, msg
    ws = await api.client.ws_connect("/ws", headers=both)
    await ws.send_str(json.dumps({"id": 1, "op": "ping", "args": {}}))
    assert "ok" in json.loads((await ws.receive(timeout=5)).data)
    await ws.close()


async def test_a_revoked_kiosk_ends_its_sessions(api: Api) -> None:
    person, _ = await _kiosk_person(api)
    async with api.ctx.store.write() as conn:
        await conn.execute(update(devices).values(revoked_at=api.ctx.clock()))
    r = await api.call("GET", "/me", person)
    assert r.status == 401 and r.code == "device_required", r


async def test_the_kiosk_signs_out_after_idle(sqlite_template: Path, tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import expect

    expect.set_options(timeout=10_000)
    app = create_app(test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path,
                                   kiosk_idle_sign_out_s=4.0), run_migrations=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, chromium() as browser:
        api = Api(client)
        seed = await seed_kiosk(api, PIN)
        base = str(client.make_url("/")).rstrip("/")
        context = await browser.new_context(viewport=KIOSK)
        try:
            kiosk = await context.new_page()
            errors: list[str] = []
            kiosk.on("pageerror", lambda e: errors.append(str(e)))
            await kiosk_sign_in(kiosk, base, seed, PIN)
            signed_in = {c["name"]: c["value"] for c in await context.cookies()}
            session = Who(signed_in["kw_session"], {}, signed_in["kw_device"])
            assert (await api.call("GET", "/me", session)).status == 200
            countdown = kiosk.locator("#idle")
            # Input keeps the person signed in: press keys for 3 s (idle is 4 s).
            for _ in range(6):
                await kiosk.wait_for_timeout(500)
                await kiosk.keyboard.press("Shift")
            await expect(kiosk.locator("body")).to_have_attribute("data-ready", "signed-in")
            # Then nothing: the countdown shows (from 2 s left), then the kiosk signs out.
            await expect(countdown).to_be_visible()
            await expect(countdown).to_contain_text("signing out in")
            await expect(kiosk.locator("body")).to_have_attribute("data-ready", "signed-out")
            await expect(kiosk.get_by_label("PIN")).to_be_visible()
            await expect(kiosk.locator("#threads")).to_be_hidden()
            # The session is over at the server too, not just hidden.
            cookies = {c["name"]: c["value"] for c in await context.cookies()}
            assert "kw_session" not in cookies, cookies
            r = await api.call("GET", "/me", session)
            assert r.status == 401 and r.code == "unauthorized", r
            assert errors == [], errors
        finally:
            await context.close()
