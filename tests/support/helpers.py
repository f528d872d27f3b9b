"""Small helpers that talk to a running app the way a client would."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
from aiohttp.test_utils import TestClient

from server import accounts
from server.http.routing import CONTEXT

VISA = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123",
        "name": "Test Family"}


def decode_frame(msg: aiohttp.WSMessage) -> dict[str, Any] | None:
    """A /ws frame as the client received it: text is JSON, binary is msgpack; None when the
    socket closed or failed instead."""
    if msg.type == aiohttp.WSMsgType.TEXT:
        return json.loads(msg.data)
    if msg.type == aiohttp.WSMsgType.BINARY:
        return msgpack.unpackb(msg.data)
    return None


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


@dataclass
class Who:
    token: str
    account: dict[str, Any]
    device: str | None = None  # a kiosk session's device token, sent with each of its calls

    @property
    def id(self) -> str:
        return self.account["id"]


class Api:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def ctx(self):
        return self.client.app[CONTEXT]

    async def call(self, method: str, path: str, who: Who | str | None = None,
                   json: Any = None, data: Any = None, key: str | None = None,
                   headers: dict[str, str] | None = None) -> Reply:
        headers = dict(headers or {})
        token = who.token if isinstance(who, Who) else who
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(who, Who) and who.device:
            headers.setdefault("X-Device-Token", who.device)
        if key:
            headers["Idempotency-Key"] = key
        url = path if path.startswith(("/api/", "/healthz", "/readyz", "/sandbox-pay/")) \
            else "/api/v1" + path
        async with self.client.request(method, url, json=json, data=data,
                                       headers=headers) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = await resp.text()
            return Reply(resp.status, body)

    async def family(self, name: str = "Fam") -> Who:
        email = f"{name.lower()}-{secrets.token_hex(4)}@example.test"
        r = await self.call("POST", "/auth/signup",
                            json={"email": email, "password": "correct horse", "name": name})
        assert r.status == 201, r.body
        r = await self.call("POST", "/auth/login",
                            json={"email": email, "password": "correct horse"})
        assert r.status == 200, r.body
        return Who(r.body["token"], r.body["account"])

    async def admin(self) -> Who:
        ctx = self.ctx
        email = f"admin-{secrets.token_hex(4)}@example.test"
        async with ctx.store.write() as conn:
            await accounts.create(conn, role="admin", name="Admin", email=email,
                                  password_hash=await ctx.passwords.hash("admin password"),
                                  now=ctx.clock())
        r = await self.call("POST", "/auth/login", json={"email": email,
                                                         "password": "admin password"})
        assert r.status == 200, r.body
        return Who(r.body["token"], r.body["account"])

    async def facility(self, admin: Who, **settings: Any) -> str:
        r = await self.call("POST", "/facilities", admin,
                            json={"name": "Test Facility", "timezone": "America/Chicago",
                                  "settings": settings})
        assert r.status == 201, r.body
        return r.body["facility"]["id"]

    async def staff(self, admin: Who, facility_id: str) -> Who:
        email = f"staff-{secrets.token_hex(4)}@example.test"
        r = await self.call("POST", f"/facilities/{facility_id}/staff", admin,
                            json={"email": email, "password": "staff password", "name": "Off"})
        assert r.status == 201, r.body
        r = await self.call("POST", "/auth/login", json={"email": email,
                                                         "password": "staff password"})
        assert r.status == 200, r.body
        return Who(r.body["token"], r.body["account"])

    async def person(self, staff: Who, facility_id: str, pin: str = "4321") -> Who:
        number, device = await self.kiosk_person(staff, facility_id, pin)
        return await self.kiosk_login(facility_id, number, pin, device)

    async def kiosk_person(self, staff: Who, facility_id: str, pin: str = "4321",
                           name: str = "Pat Person") -> tuple[str, str]:
        """A person of the facility and a kiosk registered there: (inmate number, the
        kiosk's device token)."""
        number = f"P{secrets.token_hex(3)}"
        r = await self.call("POST", f"/facilities/{facility_id}/people", staff,
                            json={"name": name, "inmate_number": number, "pin": pin})
        assert r.status == 201, r.body
        r = await self.call("POST", f"/facilities/{facility_id}/devices", staff,
                            json={"label": "kiosk"})
        assert r.status == 201, r.body
        return number, r.body["device_token"]

    async def kiosk_login(self, facility_id: str, number: str, pin: str, device: str) -> Who:
        r = await self.call("POST", "/auth/kiosk",
                            json={"facility_id": facility_id, "inmate_number": number,
                                  "pin": pin},
                            headers={"X-Device-Token": device})
        assert r.status == 200, r.body
        return Who(r.body["token"], r.body["account"], device)

    async def buy(self, who: Who, credits: int, card: dict | None = None,
                  key: str | None = None) -> Reply:
        return await self.call("POST", "/purchases", who,
                               json={"credits": credits, "card": card or VISA},
                               key=key or secrets.token_hex(8))

    async def connect(self, family: Who, person: Who) -> None:
        """An approved connection, written straight to the store until the connection
        routes exist (the messaging issue)."""
        from server.schema import connections
        from store.ids import new_id

        ctx = self.ctx
        now = ctx.clock()
        async with ctx.store.write() as conn:
            await conn.execute(connections.insert().values(
                id=new_id("con"), facility_id=person.account["facility_id"],
                family_id=family.id, person_id=person.id, status="approved",
                privileged=False, created_at=now, updated_at=now))
