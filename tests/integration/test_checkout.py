"""Hosted checkout (issue 19 item 3; billing/hosted.py, docs/payments.md): the card goes only to
the processor's page, and Kinwire credits a checkout from the processor's signed confirmation.

The adversaries: the processor's notification and the browser's return arriving together, and
the return replayed many times at once (one purchase); a browser that forges or alters a
confirmation, or brings another family's (nothing credited); a declined card (it says what to
do; a retry on the same page pays once); a page left open past its expiry (nothing charged).
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime

from sqlalchemy import func, select

from billing import ledger
from billing.gateway import Card
from billing.hosted import SandboxPayments
from billing.tables import checkouts, purchases
from server.schema import events
from tests.conftest import app_client
from tests.support.clock import Clock
from tests.support.helpers import VISA, Api, Who

START = datetime(2026, 6, 1, 15, 0, tzinfo=UTC)
CARD = Card(VISA["number"], VISA["exp_month"], VISA["exp_year"], VISA["cvc"], VISA["name"])


async def balance(api: Api, who: Who) -> int:
    async with api.ctx.store.read() as conn:
        return await ledger.balance(conn, who.id)


async def rows(api: Api, table) -> int:
    async with api.ctx.store.read() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


async def open_checkout(api: Api, who: Who, credits: int = 500, key: str = "k1") -> dict:
    r = await api.call("POST", "/checkouts", who, json={"credits": credits}, key=key)
    assert r.status == 201, r.body
    return r.body


def session_of(opened: dict) -> str:
    url = opened["pay_url"]
    assert url.startswith("/sandbox-pay/#"), url  # in the fragment: never in a server's log
    return url.split("#", 1)[1]


async def pay(api: Api, session: str, card: dict | None = None):
    return await api.call("POST", "/sandbox-pay/pay", json={"session": session,
                                                            "card": card or VISA})


async def test_a_hosted_checkout_credits_once_however_the_confirmation_comes(api: Api) -> None:
    family = await api.family()
    opened = await open_checkout(api, family)
    assert opened["checkout"]["total_cents"] == 650 and opened["checkout"]["status"] == "open"
    assert "Sandbox Payments" in opened["processor"]
    again = await open_checkout(api, family)  # the same Idempotency-Key: the same checkout
    assert again == opened

    page = await api.client.get("/sandbox-pay/")
    assert page.status == 200 and "Sandbox Payments" in await page.text()
    shown = await api.call("POST", "/sandbox-pay/session", json={"session": session_of(opened)})
    assert shown.status == 200, shown.body
    assert (shown.body["amount_cents"], shown.body["description"]) == (650, "500 Kinwire credits")

    paid = await pay(api, session_of(opened))
    assert paid.status == 200, paid.body
    token = paid.body["confirmation"]
    checkout_id = opened["checkout"]["id"]
    assert paid.body["return_url"] == f"/#checkout={checkout_id}&confirmation={token}"
    # The processor's notification credited it before the browser came back.
    assert await balance(api, family) == 500

    # The browser's return, replayed eight times at once, and the page paid again.
    returns = await asyncio.gather(*(
        api.call("POST", f"/checkouts/{checkout_id}/confirm", family,
                 json={"confirmation": token}) for _ in range(8)), pay(api, session_of(opened)))
    assert [r.status for r in returns] == [200] * 9, [r.body for r in returns]
    assert len({r.body["purchase"]["id"] for r in returns[:8]}) == 1
    assert await balance(api, family) == 500
    assert await rows(api, purchases) == 1
    async with api.ctx.store.read() as conn:  # one live balance push (and receipt), not nine
        pushes = (await conn.execute(select(func.count()).select_from(events).where(
            events.c.account_id == family.id, events.c.type == "balance"))).scalar_one()
    assert pushes == 1
    got = await api.call("GET", f"/checkouts/{checkout_id}", family)
    assert got.body["checkout"]["status"] == "paid"
    assert got.body["checkout"]["purchase_id"] == returns[0].body["purchase"]["id"]
    purchase = returns[0].body["purchase"]
    assert (purchase["credits"], purchase["fee_cents"], purchase["total_cents"],
            purchase["card_last4"]) == (500, 150, 650, "4242")
    async with api.ctx.store.read() as conn:
        assert await ledger.check_invariants(conn) == []
        assert sum((await ledger.derived_balances(conn)).values()) == 0


def _forged(token: str, **changes) -> str:
    body, _, mac = token.partition(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    return f"{raw}.{mac}"


async def test_a_forged_altered_or_borrowed_confirmation_credits_nothing(api: Api) -> None:
    family, other = await api.family("A"), await api.family("B")
    mine = await open_checkout(api, family)
    theirs = await open_checkout(api, other, key="k2")
    paid = await pay(api, session_of(theirs))
    token = paid.body["confirmation"]
    mine_id = mine["checkout"]["id"]
    elsewhere = SandboxPayments(b"another processor's key, not ours")
    page = elsewhere.page_url(mine_id, 650, "x", datetime(2100, 1, 1, tzinfo=UTC))
    foreign = await elsewhere.pay(page.split("#", 1)[1], CARD, START)
    attempts = {
        "theirs, on my checkout": (family, mine_id, token),
        "theirs, altered to name mine": (family, mine_id, _forged(token, c=mine_id)),
        "signed by another key": (family, mine_id, foreign),
        "a page session, not a payment": (family, mine_id, session_of(mine)),
        "not a token": (family, mine_id, "x" * 40),
        "theirs, on theirs, by me": (family, theirs["checkout"]["id"], token),
    }
    for what, (who, checkout_id, confirmation) in attempts.items():
        r = await api.call("POST", f"/checkouts/{checkout_id}/confirm", who,
                           json={"confirmation": confirmation})
        assert r.status in (404, 422), (what, r.status, r.body)
        assert r.code in ("invalid_confirmation", "not_found"), (what, r.body)
    assert await balance(api, family) == 0
    assert await balance(api, other) == 500  # their own payment, credited to them alone
    mine_now = await api.call("GET", f"/checkouts/{mine_id}", family)
    assert mine_now.body["checkout"]["status"] == "open"
    # Another family cannot even read my checkout.
    peek = await api.call("GET", f"/checkouts/{mine_id}", other)
    assert peek.status == 404


async def test_a_declined_card_says_what_to_do_and_a_retry_pays_once(api: Api) -> None:
    family = await api.family()
    opened = await open_checkout(api, family)
    declined = await pay(api, session_of(opened), {**VISA, "number": "4000000000009995"})
    assert declined.status == 402 and declined.code == "card_declined", declined.body
    assert "Try another card" in declined.body["error"]["message"]
    assert "nothing was charged" in declined.body["error"]["message"]
    assert await balance(api, family) == 0
    retried = await pay(api, session_of(opened), {**VISA, "number": "5555555555554444"})
    assert retried.status == 200, retried.body
    assert await balance(api, family) == 500
    assert await rows(api, purchases) == 1


async def test_a_page_past_its_expiry_charges_nothing(db_url: str, tmp_path) -> None:
    clock = Clock(START)
    async with app_client(db_url, tmp_path, clock=clock) as client:
        api = Api(client)
        family = await api.family()
        opened = await open_checkout(api, family)
        clock.advance(minutes=31)
        shown = await api.call("POST", "/sandbox-pay/session",
                               json={"session": session_of(opened)})
        assert shown.status == 410 and shown.code == "checkout_expired", shown.body
        paid = await pay(api, session_of(opened))
        assert paid.status == 410, paid.body
        assert await balance(api, family) == 0
        assert await rows(api, checkouts) == 1 and await rows(api, purchases) == 0


async def test_only_a_family_opens_a_checkout_and_amounts_are_checked(api: Api) -> None:
    admin = await api.admin()
    r = await api.call("POST", "/checkouts", admin, json={"credits": 500}, key="a")
    assert r.status == 403, r.body
    family = await api.family()
    for credits in (499, 750, 10_000_000):
        r = await api.call("POST", "/checkouts", family, json={"credits": credits},
                           key=f"c{credits}")
        assert r.status == 422, (credits, r.body)
    r = await api.call("POST", "/checkouts", family, json={"credits": 500})
    assert r.status == 400 and r.code == "idempotency_key_required", r.body
    assert await rows(api, checkouts) == 0
