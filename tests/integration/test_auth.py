"""Sign-up, log-in, sessions, cookies, the failed-login limit and kiosk log-in."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update

from server.app import create_app
from server.http.routing import COOKIE
from server.schema import accounts, devices, sessions
from tests import conftest
from tests.support.clock import Clock
from tests.support.helpers import Api, Reply, Who

PASSWORD = "correct horse battery"
TRUSTED_ORIGIN = "https://app.kinwire.example"


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    assert isinstance(reply.body, dict) and set(reply.body) == {"error"}, reply
    assert reply.body["error"]["code"] == code, reply
    assert isinstance(reply.body["error"]["message"], str), reply


@dataclass
class Rig:
    api: Api
    clock: Clock

    @property
    def settings(self):
        return self.api.ctx.settings


@pytest.fixture
async def rig(db_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    """An app of its own with a hand-moved clock and one trusted foreign origin."""
    # Starts at the real instant only so that the session cookies' Expires (set from this
    # clock) are live for the test client's cookie jar, which reads the real clock; every
    # expectation is relative to it (TTLs, windows, moved by hand), none to the hour or date.
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    settings = conftest.test_settings(db_url, tmp_path, allowed_origins=(TRUSTED_ORIGIN,))
    app = create_app(settings, clock=clock, run_migrations=False)
    async with TestClient(TestServer(app)) as client:
        yield Rig(Api(client), clock)


async def signup(api: Api, email: str | None = None, password: str = PASSWORD,
                 name: str = "Fam") -> Reply:
    email = email or f"fam-{secrets.token_hex(4)}@example.test"
    return await api.call("POST", "/auth/signup",
                          json={"email": email, "password": password, "name": name})


async def login(api: Api, email: str, password: str = PASSWORD,
                headers: dict[str, str] | None = None) -> Reply:
    return await api.call("POST", "/auth/login", json={"email": email, "password": password},
                          headers=headers)


async def family(api: Api) -> tuple[str, Who]:
    r = await signup(api)
    assert r.status == 201, r.body
    email = r.body["account"]["email"]
    r = await login(api, email)
    assert r.status == 200, r.body
    return email, Who(r.body["token"], r.body["account"])


# --- sign-up and log-in ----------------------------------------------------------------------


async def test_signup_login_and_me(api: Api) -> None:
    assert_error(await api.call("GET", "/me"), 401, "unauthorized")
    r = await signup(api, "Jo.Family@Example.TEST", name="  Jo Family ")
    assert r.status == 201, r.body
    account = r.body["account"]
    assert account["role"] == "family" and account["facility_id"] is None
    assert account["email"] == "jo.family@example.test" and account["name"] == "Jo Family"
    assert not {"password", "password_hash", "pin_hash"} & set(account)

    r = await login(api, "jo.family@example.test")
    assert r.status == 200, r.body
    assert r.body["account"] == account
    token = r.body["token"]
    assert isinstance(token, str) and len(token) >= 40

    me = await api.call("GET", "/me", token)
    assert me.status == 200, me.body
    assert me.body == {"account": account, "balance": 0}


async def test_wrong_password_and_unknown_email_look_the_same(api: Api) -> None:
    email, _ = await family(api)
    wrong = await login(api, email, "not the password")
    assert_error(wrong, 401, "invalid_credentials")
    nobody = await login(api, "nobody@example.test")
    assert_error(nobody, 401, "invalid_credentials")
    assert wrong.body == nobody.body


async def test_email_is_unique_and_case_insensitive(api: Api) -> None:
    email, who = await family(api)
    assert_error(await signup(api, email), 409, "email_taken")
    assert_error(await signup(api, email.upper()), 409, "email_taken")
    assert_error(await signup(api, f"  {email.title()} "), 409, "email_taken")
    r = await login(api, email.upper())
    assert r.status == 200 and r.body["account"]["id"] == who.id, r.body


async def test_bad_authorization_headers_are_401(api: Api) -> None:
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc",
                   "Bearer " + secrets.token_urlsafe(32)):
        r = await api.call("GET", "/me", headers={"Authorization": header})
        assert_error(r, 401, "unauthorized")


async def test_a_disabled_account_cannot_log_in_and_loses_its_sessions(api: Api) -> None:
    email, who = await family(api)
    async with api.ctx.store.write() as conn:
        await conn.execute(update(accounts).where(accounts.c.id == who.id)
                           .values(disabled=True))
    assert_error(await api.call("GET", "/me", who), 401, "unauthorized")
    assert_error(await login(api, email), 401, "invalid_credentials")


# --- the failed-login limit --------------------------------------------------------------------


async def test_failed_logins_are_limited_per_account(rig: Rig) -> None:
    api, limit = rig.api, rig.settings.login_failures_max
    assert limit == 5
    email, _ = await family(api)
    other_email, _ = await family(api)
    for attempt in range(limit):
        # Case does not make another identity: the limit is per account, not per spelling.
        spelled = email.upper() if attempt % 2 else email
        assert_error(await login(api, spelled, f"guess {attempt}"), 401, "invalid_credentials")

    for password in (PASSWORD, "another guess"):  # even the right password is refused now
        async with api.client.post("/api/v1/auth/login",
                                   json={"email": email, "password": password}) as resp:
            body = await resp.json()
            assert resp.status == 429, body
            assert body["error"]["code"] == "too_many_attempts"
            assert int(resp.headers["Retry-After"]) == rig.settings.login_window_s
    # Another account from the same address is not locked out.
    assert (await login(api, other_email)).status == 200

    rig.clock.advance(seconds=rig.settings.login_window_s + 1)
    r = await login(api, email)
    assert r.status == 200, r.body


async def test_failures_under_the_limit_do_not_lock(rig: Rig) -> None:
    api = rig.api
    email, _ = await family(api)
    for _ in range(rig.settings.login_failures_max - 1):
        assert_error(await login(api, email, "wrong"), 401, "invalid_credentials")
    assert (await login(api, email)).status == 200


# --- sessions: logout, expiry, tokens at rest ----------------------------------------------


def set_cookie(headers: Any) -> str:
    cookies = [h for h in headers.getall("Set-Cookie", []) if h.startswith(f"{COOKIE}=")]
    assert len(cookies) == 1, headers
    return cookies[0]


async def test_logout_revokes_the_token_and_clears_the_cookie(api: Api) -> None:
    email, who = await family(api)
    _, bystander = await family(api)
    second = (await login(api, email)).body["token"]

    async with api.client.post("/api/v1/auth/logout",
                               headers={"Authorization": f"Bearer {who.token}"}) as resp:
        assert resp.status == 200, await resp.text()
        cleared = set_cookie(resp.headers)
    assert cleared.startswith(f'{COOKIE}="";') or cleared.startswith(f"{COOKIE}=;"), cleared
    assert "max-age=0" in cleared.lower() or "expires=thu, 01 jan 1970" in cleared.lower()

    assert_error(await api.call("GET", "/me", who), 401, "unauthorized")
    assert_error(await api.call("POST", "/auth/logout", who), 401, "unauthorized")
    # Only that session ended: the account's other session and other accounts go on.
    assert (await api.call("GET", "/me", second)).status == 200
    assert (await api.call("GET", "/me", bystander)).status == 200


async def test_the_login_cookie_authenticates_and_refuses_cross_site_writes(
        rig: Rig) -> None:
    api = rig.api
    r = await signup(api)
    email = r.body["account"]["email"]
    async with api.client.post("/api/v1/auth/login",
                               json={"email": email, "password": PASSWORD}) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
        cookie = set_cookie(resp.headers)
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert attributes[0] == f"{COOKIE}={token}".lower()
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert "path=/" in attributes
    assert f"max-age={rig.settings.session_ttl_s}" in attributes

    # No Authorization header: the client's cookie jar carries the session.
    me = await api.call("GET", "/me")
    assert me.status == 200 and me.body["account"]["email"] == email, me.body
    # Reads from any origin are answered; a cookie write from a foreign origin is not.
    assert (await api.call("GET", "/me", headers={"Origin": "https://evil.example"})).status \
        == 200
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example"):
        r = await api.call("POST", "/auth/logout", headers={"Origin": origin})
        assert_error(r, 403, "forbidden")
    assert (await api.call("GET", "/me")).status == 200, "the refused logout ended the session"
    # A bearer token is never sent by a browser on its own: no Origin check for it.
    r = await api.call("GET", "/ledger", token, headers={"Origin": "https://evil.example"})
    assert r.status == 200

    # The trusted origin and the server's own origin may write with the cookie.
    own = str(api.client.make_url("/")).rstrip("/")
    second = await login(api, email)  # now the jar holds this session's cookie
    assert second.status == 200
    r = await api.call("POST", "/auth/logout", headers={"Origin": TRUSTED_ORIGIN})
    assert r.status == 200, r.body
    assert_error(await api.call("GET", "/me", second.body["token"]), 401, "unauthorized")
    assert (await login(api, email)).status == 200
    r = await api.call("POST", "/auth/logout", headers={"Origin": own})
    assert r.status == 200, r.body
    assert_error(await api.call("GET", "/me"), 401, "unauthorized")  # and the jar is empty


async def test_sessions_expire(rig: Rig) -> None:
    api, clock, s = rig.api, rig.clock, rig.settings
    _, who = await family(api)
    kiosk = await person_on_kiosk(api)
    clock.advance(seconds=s.kiosk_session_ttl_s - 1)
    assert (await api.call("GET", "/me", kiosk.person)).status == 200
    clock.advance(seconds=2)
    assert_error(await api.call("GET", "/me", kiosk.person), 401, "unauthorized")
    assert (await api.call("GET", "/me", who)).status == 200

    clock.advance(seconds=s.session_ttl_s - s.kiosk_session_ttl_s - 2)
    assert (await api.call("GET", "/me", who)).status == 200
    clock.advance(seconds=2)
    assert_error(await api.call("GET", "/me", who), 401, "unauthorized")
    assert_error(await api.call("POST", "/auth/logout", who), 401, "unauthorized")


async def test_passwords_pins_and_tokens_are_not_stored_in_clear(api: Api) -> None:
    _, who = await family(api)
    kiosk = await person_on_kiosk(api)
    async with api.ctx.store.read() as conn:
        fam = (await conn.execute(select(accounts).where(accounts.c.id == who.id))).one()
        per = (await conn.execute(
            select(accounts).where(accounts.c.id == kiosk.person.id))).one()
        rows = (await conn.execute(select(sessions))).all()
        device_rows = (await conn.execute(select(devices))).all()
    assert fam.password_hash.startswith("$argon2id$"), fam.password_hash
    assert PASSWORD not in fam.password_hash
    assert per.pin_hash.startswith("$argon2id$") and per.password_hash is None
    for token in (who.token, kiosk.person.token):
        digest = hashlib.sha256(token.encode()).hexdigest()
        mine = [row for row in rows if row.token_hash == digest]
        assert len(mine) == 1, "each session is found by the SHA-256 of its token"
    for row in [*rows, *device_rows]:
        for value in row:
            assert value not in (who.token, kiosk.person.token, kiosk.device_token), row
    assert {d.token_hash for d in device_rows} == {
        hashlib.sha256(t.encode()).hexdigest()
        for t in (kiosk.device_token, kiosk.other_device_token)}


# --- kiosk log-in ------------------------------------------------------------------------------


@dataclass
class Kiosk:
    facility: str
    other_facility: str
    inmate_number: str
    pin: str
    device_token: str
    other_device_token: str
    person: Who
    staff: Who


async def person_on_kiosk(api: Api) -> Kiosk:
    admin = await api.admin()
    facility, other = await api.facility(admin), await api.facility(admin)
    staff = await api.staff(admin, facility)
    number, pin = f"K-{secrets.token_hex(3)}", "246810"
    r = await api.call("POST", f"/facilities/{facility}/people", staff,
                       json={"name": "Kim Kiosk", "inmate_number": number, "pin": pin})
    assert r.status == 201, r.body
    tokens = []
    for fac in (facility, other):
        r = await api.call("POST", f"/facilities/{fac}/devices", admin, json={"label": "kiosk"})
        assert r.status == 201, r.body
        tokens.append(r.body["device_token"])
    r = await api.call("POST", "/auth/kiosk",
                       json={"facility_id": facility, "inmate_number": number, "pin": pin},
                       headers={"X-Device-Token": tokens[0]})
    assert r.status == 200, r.body
    return Kiosk(facility, other, number, pin, tokens[0], tokens[1],
                 Who(r.body["token"], r.body["account"], tokens[0]), staff)


async def kiosk_login(api: Api, facility: str, number: str, pin: str,
                      device: str | None) -> Reply:
    headers = {"X-Device-Token": device} if device is not None else {}
    return await api.call("POST", "/auth/kiosk", headers=headers,
                          json={"facility_id": facility, "inmate_number": number, "pin": pin})


async def test_kiosk_login_needs_a_device_of_that_facility(api: Api) -> None:
    k = await person_on_kiosk(api)
    assert k.person.account["role"] == "person"
    assert k.person.account["facility_id"] == k.facility
    assert k.person.account["inmate_number"] == k.inmate_number
    me = await api.call("GET", "/me", k.person)
    assert me.status == 200 and me.body["account"]["id"] == k.person.id

    for device in (None, "", "not-a-device", k.other_device_token, "x" * 500):
        r = await kiosk_login(api, k.facility, k.inmate_number, k.pin, device)
        assert_error(r, 403, "unknown_device")
    # A staff member's session token is not a device token either.
    assert_error(await kiosk_login(api, k.facility, k.inmate_number, k.pin, k.staff.token), 403,
                 "unknown_device")
    # The device of B does not admit a log-in claiming B for a person of A.
    assert_error(await kiosk_login(api, k.other_facility, k.inmate_number, k.pin,
                                   k.other_device_token), 401, "invalid_credentials")
    assert_error(await kiosk_login(api, k.facility, k.inmate_number, "000000", k.device_token),
                 401, "invalid_credentials")
    assert_error(await kiosk_login(api, k.facility, "NOBODY-1", k.pin, k.device_token), 401,
                 "invalid_credentials")
    r = await kiosk_login(api, k.facility, k.inmate_number, k.pin, k.device_token)
    assert r.status == 200 and r.body["account"]["id"] == k.person.id, r.body


async def test_kiosk_pin_failures_are_limited(rig: Rig) -> None:
    api = rig.api
    k = await person_on_kiosk(api)
    for _ in range(rig.settings.login_failures_max):
        assert_error(await kiosk_login(api, k.facility, k.inmate_number, "999999",
                                       k.device_token), 401, "invalid_credentials")
    assert_error(await kiosk_login(api, k.facility, k.inmate_number, k.pin, k.device_token), 429,
                 "too_many_attempts")
    rig.clock.advance(seconds=rig.settings.login_window_s + 1)
    assert (await kiosk_login(api, k.facility, k.inmate_number, k.pin,
                              k.device_token)).status == 200
