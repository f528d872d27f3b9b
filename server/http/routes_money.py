"""Buying credits, giving them, and the statement. Every credit moved goes through billing/."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from billing import ledger
from billing.gateway import Card
from billing.pricing import PurchaseQuote, quote_purchase
from billing.purchases import buy_credits
from common.errors import Refused
from server import idempotency
from server.auth import ANY_SESSION
from server.connections import is_approved_contact
from server.events import Outbox, lock_streams
from server.facilities import Prices, Strict
from server.http.routing import ANYONE, Call, Route, json_response
from server.settings import Settings

Credits = Annotated[int, Field(ge=1, le=10_000_000)]


class CardIn(Strict):
    number: Annotated[str, Field(min_length=12, max_length=23)]
    exp_month: Annotated[int, Field(ge=1, le=12)]
    exp_year: Annotated[int, Field(ge=2000, le=2100)]
    cvc: Annotated[str, Field(min_length=3, max_length=4)]
    name: Annotated[str, Field(min_length=1, max_length=100)]


class PurchaseIn(Strict):
    credits: Credits
    card: CardIn


class GiftIn(Strict):
    to: Annotated[str, Field(min_length=1, max_length=32)]
    credits: Credits


def quote_for(s: Settings, credits: int) -> PurchaseQuote:
    """The price of `credits` under this deployment's terms (block, fee, most per purchase)."""
    return quote_purchase(credits, block=s.credit_block, fee_cents=s.purchase_fee_cents,
                          credits_max=s.purchase_credits_max)


def _purchase_fingerprint(call: Call, body: PurchaseIn) -> str:
    # Neither the card number nor anything derived from all of it is kept, even hashed.
    digits = body.card.number.replace(" ", "").replace("-", "")
    shown = {"credits": body.credits, "last4": digits[-4:], "length": len(digits),
             "exp": [body.card.exp_month, body.card.exp_year], "name": body.card.name}
    return idempotency.request_hash("POST", call.request.path, shown)


async def purchase(call: Call) -> web.Response:
    """Buy credits by card: multiples of the block, plus the per-purchase fee."""
    body: PurchaseIn = call.body
    ctx, me, now = call.ctx, call.me, call.now()
    key = call.idempotency_key()
    quote = quote_for(ctx.settings, body.credits)
    card = Card(body.card.number, body.card.exp_month, body.card.exp_year, body.card.cvc,
                body.card.name)
    outbox = Outbox()
    async with ctx.store.write() as conn:
        replay = await idempotency.claim(conn, account_id=me.account_id, key=key,
                                         fingerprint=_purchase_fingerprint(call, body), now=now)
        if replay is not None:
            return json_response(replay[1], replay[0])
        bought = await buy_credits(conn, ctx.gateway, account_id=me.account_id, quote=quote,
                                   card=card, key=f"purchase:{me.account_id}:{key}", now=now)
        result = {"purchase": bought.public(), "balance": await ledger.balance(conn, me.account_id)}
        # The user's other tabs and devices see the new balance live (a `balance` event).
        await outbox.emit(conn, me.account_id, "balance", {"balance": result["balance"]}, now)
        if ctx.notifier is not None:  # the receipt email, with the purchase (server/mail.py)
            await ctx.notifier.receipt(conn, me.account_id, bought, now)
        await idempotency.store(conn, account_id=me.account_id, key=key, status=201, body=result)
    await outbox.signal(ctx.broker)
    return json_response(result, 201)


async def gift(call: Call) -> web.Response:
    """Give credits to an approved contact."""
    body: GiftIn = call.body
    ctx, me, now = call.ctx, call.me, call.now()
    key = call.idempotency_key()
    if body.credits > ctx.settings.gift_credits_max:
        raise Refused("invalid_amount",
                       f"one gift moves at most {ctx.settings.gift_credits_max} credits")
    fingerprint = idempotency.request_hash("POST", call.request.path, body.model_dump())
    outbox = Outbox()
    async with ctx.store.write() as conn:
        replay = await idempotency.claim(conn, account_id=me.account_id, key=key,
                                         fingerprint=fingerprint, now=now)
        if replay is not None:
            return json_response(replay[1], replay[0])
        if not await is_approved_contact(conn, me.account_id, body.to):
            raise Refused("not_connected",
                           "You can give credits only to an approved contact.")
        await ledger.transfer(conn, key=f"gift:{me.account_id}:{key}", debit=me.account_id,
                              credit=body.to, amount=body.credits, kind="gift", at=now)
        result = {"balance": await ledger.balance(conn, me.account_id)}
        # Both balances live on every open screen. Ledger rows first, then both stream heads in
        # id order: the order a message send takes them in, so the two cannot deadlock.
        await lock_streams(conn, [me.account_id, body.to])
        await outbox.emit(conn, me.account_id, "balance", {"balance": result["balance"]}, now)
        await outbox.emit(conn, body.to, "balance",
                          {"balance": await ledger.balance(conn, body.to)}, now)
        await idempotency.store(conn, account_id=me.account_id, key=key, status=201, body=result)
    await outbox.signal(ctx.broker)
    return json_response(result, 201)


def _entry(t: ledger.Transfer, account: str) -> dict:
    incoming = t.credit == account
    return {"id": t.id, "seq": t.seq, "at": t.at.isoformat(), "kind": t.kind, "ref": t.ref,
            "credits": t.amount if incoming else -t.amount,
            "counterparty": t.debit if incoming else t.credit}


async def statement(call: Call) -> web.Response:
    """The caller's own transfers, newest first (?before=<seq> for the next page)."""
    me = call.me
    limit = call.query_int("limit", lo=1, hi=call.ctx.settings.page_size_max) or 50
    async with call.ctx.store.read() as conn:
        rows = await ledger.statement(conn, me.account_id, before=call.query_int("before", lo=1),
                                      limit=limit)
        balance = await ledger.balance(conn, me.account_id) \
            if me.role in ("family", "person") else 0
    return json_response({"entries": [_entry(t, me.account_id) for t in rows],
                          "balance": balance,
                          "next_before": rows[-1].seq if len(rows) == limit else None})


async def pricing(call: Call) -> web.Response:
    """The purchase terms, so that a client shows the fee before paying without mirroring the
    server's settings, and `prices`: what a facility charges unless its settings say otherwise
    (each facility's own are in GET /facilities), so the apps copy no price table."""
    s = call.ctx.settings
    return json_response({"cents_per_credit": 1, "credit_block": s.credit_block,
                          "purchase_fee_cents": s.purchase_fee_cents,
                          "purchase_credits_max": s.purchase_credits_max,
                          "gift_credits_max": s.gift_credits_max,
                          "processor": call.ctx.hosted.name,
                          "photos_per_message_max": s.photos_per_message_max,
                          "prices": Prices().model_dump()})


ROUTES = [
    Route("GET", "/pricing", pricing, ANYONE),
    Route("POST", "/purchases", purchase, frozenset({"family"}), body=PurchaseIn,
          idempotent=True),
    Route("POST", "/gifts", gift, frozenset({"family", "person"}), body=GiftIn, idempotent=True),
    Route("GET", "/ledger", statement, ANY_SESSION,
          query={"before": "seq of the last entry seen", "limit": "page size"}),
]
