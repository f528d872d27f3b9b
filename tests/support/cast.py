"""A cast for messaging and visit tests: a facility, its staff, a person and a family,
connected, with credits; sending and balances through the HTTP API."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tests.support.helpers import Api, Who


@dataclass
class Cast:
    admin: Who
    facility: str
    staff: Who
    person: Who
    family: Who


async def cast(api: Api, *, credits: int = 500, connected: bool = True, **settings) -> Cast:
    admin = await api.admin()
    facility = await api.facility(admin, **settings)
    staff = await api.staff(admin, facility)
    person = await api.person(staff, facility)
    family = await api.family()
    if credits:
        assert (await api.buy(family, credits)).status == 201
    if connected:
        r = await api.call("POST", "/connections", family, json={"person_id": person.id})
        assert r.status == 201, r.body
        r = await api.call("POST", f"/connections/{r.body['connection']['id']}/approve", person)
        assert r.status == 200 and r.body["connection"]["status"] == "approved"
    return Cast(admin, facility, staff, person, family)


async def send(api: Api, who: Who, to: Who, body: str = "hello", key: str | None = None,
               **extra):
    return await api.call("POST", "/messages", who, json={"to": to.id, "body": body, **extra},
                          key=key or secrets.token_hex(8))


async def balance(api: Api, who: Who) -> int:
    return (await api.call("GET", "/me", who)).body["balance"]
