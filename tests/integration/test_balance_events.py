"""A purchase or a gift writes a `balance` event in the same transaction as the transfer, so the
user's other open tabs and devices show the new balance live (docs/API.md, extensions). Both
databases (the `backend` fixture through `api`/`client`)."""

from __future__ import annotations

import secrets

from aiohttp.test_utils import TestClient

from tests.support.helpers import Api
from tests.support.sockets import MSGPACK, open_socket


async def test_purchase_and_gift_push_the_new_balance(api: Api, client: TestClient) -> None:
    admin = await api.admin()
    facility = await api.facility(admin)
    person = await api.person(await api.staff(admin, facility), facility)
    family = await api.family()
    await api.connect(family, person)
    fam_sock = await open_socket(client, family)
    first = await fam_sock.call("sync", since=0)
    assert first["ok"]["events"] == [], first

    key = secrets.token_hex(8)
    r = await api.buy(family, 500, key=key)
    assert r.status == 201 and r.body["balance"] == 500, r.body
    pushed = await fam_sock.push()
    assert (pushed["type"], pushed["data"]) == ("balance", {"balance": 500}), pushed
    bought_seq = pushed["seq"]

    # A replay of the same purchase moves nothing and writes no event.
    again = await api.buy(family, 500, key=key)
    assert again.status == 201 and again.body["balance"] == 500

    # A gift: the giver's and the recipient's streams both get their new balance.
    person_sock = await open_socket(client, person, MSGPACK)
    r = await api.call("POST", "/gifts", family, json={"to": person.id, "credits": 120},
                       key=secrets.token_hex(8))
    assert r.status == 201 and r.body["balance"] == 380, r.body
    pushed = await fam_sock.push()
    assert (pushed["type"], pushed["data"]) == ("balance", {"balance": 380}), pushed
    assert pushed["seq"] == bought_seq + 1, "the replayed purchase wrote no event"
    got = await person_sock.push()
    assert (got["type"], got["data"]) == ("balance", {"balance": 120}), got

    # The events are stored, not only pushed: a socket that syncs later reads them in order.
    late = await open_socket(client, family)
    synced = await late.call("sync", since=0)
    balances = [e["data"]["balance"] for e in synced["ok"]["events"] if e["type"] == "balance"]
    assert balances == [500, 380], synced
    for sock in (fam_sock, person_sock, late):
        await sock.ws.close()
