"""Buying and giving credits through the HTTP API, on SQLite and PostgreSQL: concurrency,
Idempotency-Key replays and conflicts, declined cards."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from datetime import datetime

from sqlalchemy import func, select

from billing import ledger
from billing.gateway import Card, Charge, PaymentGateway
from billing.tables import ledger_transfers, purchases
from server.schema import idempotency
from tests.support.helpers import VISA, Api, Who

DECLINED = {**VISA, "number": "4000000000000002"}
MASTERCARD = {**VISA, "number": "5555555555554444"}


class CountingGateway:
    """The app's gateway, counting the charges it is asked for."""

    def __init__(self, inner: PaymentGateway) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    async def charge(self, card: Card, amount_cents: int, idempotency_key: str,
                     now: datetime) -> Charge:
        self.calls.append((idempotency_key, amount_cents))
        return await self.inner.charge(card, amount_cents, idempotency_key, now)


def count_charges(api: Api) -> CountingGateway:
    gateway = CountingGateway(api.ctx.gateway)
    api.ctx.gateway = gateway
    return gateway


async def family_and_contact(api: Api) -> tuple[Who, Who]:
    """A family member with an approved connection to an incarcerated person."""
    admin = await api.admin()
    facility = await api.facility(admin)
    staff = await api.staff(admin, facility)
    person = await api.person(staff, facility)
    family = await api.family()
    await api.connect(family, person)
    return family, person


async def balance(api: Api, account_id: str) -> int:
    async with api.ctx.store.read() as conn:
        return await ledger.balance(conn, account_id)


async def count(api: Api, table, *where) -> int:
    async with api.ctx.store.read() as conn:
        return (await conn.execute(select(func.count()).select_from(table).where(*where))
                ).scalar_one()


async def assert_ledger_sound(api: Api) -> None:
    async with api.ctx.store.read() as conn:
        assert await ledger.check_invariants(conn) == []
        assert sum((await ledger.derived_balances(conn)).values()) == 0


def gift(api: Api, who: Who, to: Who, credits: int, key: str | None):
    return api.call("POST", "/gifts", who, json={"to": to.id, "credits": credits}, key=key)


# --- (a) concurrent gifts ------------------------------------------------------------------

async def test_concurrent_gifts_never_overdraw(api: Api) -> None:
    family, person = await family_and_contact(api)
    r = await api.buy(family, 500)
    assert r.status == 201, r.body

    replies = await asyncio.gather(*(gift(api, family, person, 50, f"gift-{i}")
                                     for i in range(200)))

    assert Counter(r.status for r in replies) == {201: 10, 402: 190}
    assert {r.code for r in replies if r.status == 402} == {"insufficient_credits"}
    assert sorted(r.body["balance"] for r in replies if r.status == 201) == list(
        range(0, 500, 50))
    assert await balance(api, family.id) == 0
    assert await balance(api, person.id) == 500
    me = await api.call("GET", "/me", family)
    assert me.status == 200 and me.body["balance"] == 0
    assert await count(api, ledger_transfers, ledger_transfers.c.kind == "gift") == 10
    # Refused requests leave no idempotency record behind (so a retry may run afresh).
    assert await count(api, idempotency, idempotency.c.account_id == family.id) == 1 + 10
    await assert_ledger_sound(api)


async def test_refused_gift_retried_after_top_up_succeeds(api: Api) -> None:
    family, person = await family_and_contact(api)
    r = await gift(api, family, person, 50, "g-1")
    assert (r.status, r.code) == (402, "insufficient_credits")
    assert (await api.buy(family, 500)).status == 201
    r = await gift(api, family, person, 50, "g-1")
    assert r.status == 201 and r.body == {"balance": 450}
    assert await balance(api, person.id) == 50
    await assert_ledger_sound(api)


async def test_gift_replayed_concurrently_moves_credits_once(api: Api) -> None:
    family, person = await family_and_contact(api)
    assert (await api.buy(family, 500)).status == 201

    replies = await asyncio.gather(*(gift(api, family, person, 50, "same-gift")
                                     for _ in range(20)))

    assert [r.status for r in replies] == [201] * 20
    assert all(r.body == {"balance": 450} for r in replies)
    assert await balance(api, family.id) == 450
    assert await balance(api, person.id) == 50
    assert await count(api, ledger_transfers, ledger_transfers.c.kind == "gift") == 1
    other = await gift(api, family, person, 60, "same-gift")
    assert (other.status, other.code) == (409, "idempotency_conflict")
    assert await balance(api, family.id) == 450
    await assert_ledger_sound(api)


# --- (b) purchases replayed ------------------------------------------------------------------

async def test_purchase_replayed_concurrently_charges_once(api: Api) -> None:
    family = await api.family()
    gateway = count_charges(api)

    replies = await asyncio.gather(*(api.buy(family, 500, key="buy-once") for _ in range(20)))

    assert [r.status for r in replies] == [201] * 20, [r.body for r in replies]
    first = replies[0].body
    assert all(r.body == first for r in replies)
    assert first["balance"] == 500
    assert (first["purchase"]["credits"], first["purchase"]["total_cents"]) == (500, 650)
    assert len(gateway.calls) == 1
    assert gateway.calls[0][1] == 650
    assert await count(api, purchases, purchases.c.account_id == family.id) == 1
    assert await count(api, ledger_transfers, ledger_transfers.c.kind == "purchase") == 1
    assert await count(api, ledger_transfers, ledger_transfers.c.kind == "purchase_fee") == 1
    assert await balance(api, family.id) == 500

    later = await api.buy(family, 500, key="buy-once")  # a replay after the fact, too
    assert (later.status, later.body) == (201, first)
    assert len(gateway.calls) == 1
    assert await balance(api, family.id) == 500
    await assert_ledger_sound(api)


# --- (c) same key, another body --------------------------------------------------------------

async def test_same_key_with_another_body_is_a_conflict(api: Api) -> None:
    family = await api.family()
    gateway = count_charges(api)
    first = await api.buy(family, 500, key="k-1")
    assert first.status == 201, first.body

    for credits, card in ((1000, VISA), (500, MASTERCARD)):
        r = await api.buy(family, credits, card=card, key="k-1")
        assert (r.status, r.code) == (409, "idempotency_conflict"), r.body

    assert len(gateway.calls) == 1
    assert await balance(api, family.id) == 500
    assert await count(api, purchases, purchases.c.account_id == family.id) == 1
    # Another account may use the same key for its own purchase.
    other = await api.family("Other")
    r = await api.buy(other, 1000, key="k-1")
    assert r.status == 201 and r.body["balance"] == 1000
    assert await balance(api, family.id) == 500
    await assert_ledger_sound(api)


# --- (d) no key --------------------------------------------------------------------------------

async def test_missing_or_bad_idempotency_key_is_refused(api: Api) -> None:
    family, person = await family_and_contact(api)
    gateway = count_charges(api)
    body = {"credits": 500, "card": VISA}
    too_long = "k" * 129
    for headers in ({}, {"Idempotency-Key": ""}, {"Idempotency-Key": too_long}):
        r = await api.call("POST", "/purchases", family, json=body, headers=headers)
        assert (r.status, r.code) == (400, "idempotency_key_required"), (headers, r.body)
    assert gateway.calls == []
    assert await balance(api, family.id) == 0

    assert (await api.buy(family, 500)).status == 201
    r = await gift(api, family, person, 50, key=None)
    assert (r.status, r.code) == (400, "idempotency_key_required")
    assert await balance(api, family.id) == 500
    assert await balance(api, person.id) == 0
    await assert_ledger_sound(api)


# --- (e) declined card -----------------------------------------------------------------------

async def test_declined_card_moves_nothing_and_the_key_can_be_retried(api: Api) -> None:
    family = await api.family()
    gateway = count_charges(api)

    r = await api.buy(family, 500, card=DECLINED, key="try-1")
    assert (r.status, r.code) == (402, "card_declined"), r.body
    assert await balance(api, family.id) == 0
    assert await count(api, purchases, purchases.c.account_id == family.id) == 0
    assert await count(api, ledger_transfers) == 0
    assert await count(api, idempotency, idempotency.c.account_id == family.id) == 0
    await assert_ledger_sound(api)

    r = await api.buy(family, 500, key="try-1")  # the same key, a good card
    assert r.status == 201, r.body
    assert r.body["balance"] == 500 and r.body["purchase"]["card_last4"] == "4242"
    assert await count(api, purchases, purchases.c.account_id == family.id) == 1
    assert [amount for _, amount in gateway.calls] == [650, 650]  # declined, then charged

    # The key is now spent on the good card: the declined request again is another body.
    r = await api.buy(family, 500, card=DECLINED, key="try-1")
    assert (r.status, r.code) == (409, "idempotency_conflict")
    assert await balance(api, family.id) == 500
    await assert_ledger_sound(api)


async def test_purchase_and_gift_keys_do_not_collide_across_routes(api: Api) -> None:
    """One Idempotency-Key for a purchase and then a gift is a different request."""
    family, person = await family_and_contact(api)
    key = secrets.token_hex(8)
    assert (await api.buy(family, 500, key=key)).status == 201
    r = await gift(api, family, person, 50, key)
    assert (r.status, r.code) == (409, "idempotency_conflict")
    assert await balance(api, family.id) == 500
    await assert_ledger_sound(api)
