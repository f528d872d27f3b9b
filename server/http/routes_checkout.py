"""Hosted checkout (billing/hosted.py has the flow): the family's app opens a checkout and goes to
the processor's page; the processor's confirmation credits it. And the sandbox processor's own
two endpoints, under /sandbox-pay/ beside its page: outside Kinwire's API, as a real
processor's would be on its own site.

The card is typed only on the processor's page; Kinwire's routes here never see it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import Field

from billing import checkout, ledger
from billing.gateway import Card
from billing.hosted import ConfirmationError, Confirmed, SandboxPayments
from server import idempotency
from server.context import Context
from server.events import Outbox
from server.facilities import Strict
from server.http.routes_money import CardIn, Credits, quote_for
from server.http.routing import ANYONE, Call, Route, json_response

Token = Annotated[str, Field(min_length=10, max_length=2000)]


class CheckoutIn(Strict):
    credits: Credits


class ConfirmIn(Strict):
    confirmation: Token


class SessionIn(Strict):
    session: Token


class PayIn(Strict):
    session: Token
    card: CardIn


async def open_checkout(call: Call) -> web.Response:
    """Open a hosted checkout: the quote, and the processor's page to pay it on."""
    body: CheckoutIn = call.body
    ctx, me, now = call.ctx, call.me, call.now()
    key = call.idempotency_key()
    quote = quote_for(ctx.settings, body.credits)
    fingerprint = idempotency.request_hash("POST", call.request.path, body.model_dump())
    async with ctx.store.write() as conn:
        replay = await idempotency.claim(conn, account_id=me.account_id, key=key,
                                         fingerprint=fingerprint, now=now)
        if replay is not None:
            return json_response(replay[1], replay[0])
        opened = await checkout.open_checkout(conn, account_id=me.account_id, quote=quote,
                                              now=now)
        result = {"checkout": opened.public(), "processor": ctx.hosted.name,
                  "pay_url": ctx.hosted.page_url(opened.id, quote.total_cents,
                                                 f"{quote.credits} Kinwire credits",
                                                 opened.expires_at)}
        await idempotency.store(conn, account_id=me.account_id, key=key, status=201, body=result)
    return json_response(result, 201)


async def show_checkout(call: Call) -> web.Response:
    """One of the caller's checkouts: open, or paid and by which purchase."""
    async with call.ctx.store.read() as conn:
        found = await checkout.get(conn, call.match("checkout_id"), call.me.account_id)
    return json_response({"checkout": found.public()})


async def confirm_checkout(call: Call) -> web.Response:
    """The browser's return from the processor's page: its signed confirmation credits the
    checkout (once, however often it comes)."""
    body: ConfirmIn = call.body
    confirmed = call.ctx.hosted.confirmation(body.confirmation)
    if confirmed.checkout_id != call.match("checkout_id"):
        raise ConfirmationError()
    # only the owner's return is answered
    done, balance = await credit(call.ctx, confirmed, call.now(), call.me.account_id)
    return json_response({"checkout": done.checkout.public(), "purchase": done.purchase.public(),
                          "balance": balance})


async def credit(ctx: Context, confirmed: Confirmed, now: datetime,
                 owner: str | None = None) -> tuple[checkout.Completed, int]:
    """Complete a checkout from a confirmation, whichever way it came; the live balance push and
    the receipt only from the call that credited it."""
    outbox = Outbox()
    async with ctx.store.write() as conn:
        done = await checkout.complete(conn, confirmed, now, owner)
        owner = done.checkout.account_id
        balance = await ledger.balance(conn, owner)
        if done.fresh:
            await outbox.emit(conn, owner, "balance", {"balance": balance}, now)
            if ctx.notifier is not None:
                await ctx.notifier.receipt(conn, owner, done.purchase, now)
    await outbox.signal(ctx.broker)
    return done, balance


# --- the sandbox processor (its page is static/sandbox-pay.html) -------------------------------


async def sandbox_session(call: Call) -> web.Response:
    """What the processor's page shows: the amount and what it buys, as Kinwire signed them."""
    body: SessionIn = call.body
    return json_response(_sandbox(call).session(body.session, call.now()))


async def sandbox_pay(call: Call) -> web.Response:
    """Charge the card on the processor's side, then notify Kinwire (in the process: a real
    processor posts it) and hand the browser the confirmation for its return."""
    body: PayIn = call.body
    hosted, now = _sandbox(call), call.now()
    card = Card(body.card.number, body.card.exp_month, body.card.exp_year, body.card.cvc,
                body.card.name)
    token = await hosted.pay(body.session, card, now)
    confirmed = hosted.confirmation(token)
    await credit(call.ctx, confirmed, now)
    return json_response({"confirmation": token, "checkout_id": confirmed.checkout_id,
                          "return_url":
                          f"/#checkout={confirmed.checkout_id}&confirmation={token}"})


def _sandbox(call: Call) -> SandboxPayments:
    hosted = call.ctx.hosted
    assert isinstance(hosted, SandboxPayments)  # mounted only with it (server/app.py)
    return hosted


ROUTES = [
    Route("POST", "/checkouts", open_checkout, frozenset({"family"}), body=CheckoutIn,
          idempotent=True),
    Route("GET", "/checkouts/{checkout_id}", show_checkout, frozenset({"family"})),
    Route("POST", "/checkouts/{checkout_id}/confirm", confirm_checkout, frozenset({"family"}),
          body=ConfirmIn),
]
SANDBOX_PREFIX = "/sandbox-pay"
SANDBOX_ROUTES = [
    Route("POST", "/session", sandbox_session, ANYONE, body=SessionIn),
    Route("POST", "/pay", sandbox_pay, ANYONE, body=PayIn),
]
