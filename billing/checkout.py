"""Hosted checkout sessions (billing/hosted.py has the flow and the processor's side).

A checkout is opened with the quote the family will pay and an expiry for the processor's page.
`complete` credits it from a processor's confirmation: once, whoever brings it and however
often (the processor's notification and the browser's return both do). The ledger keys of the
purchase are the checkout's id, and the row flips from open to paid by one conditional UPDATE,
so two confirmations at once credit one purchase and exactly one of them reports it fresh.
A valid confirmation is honoured after the page's expiry: the card was charged, so the family
gets its credits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.hosted import Confirmed
from billing.pricing import PurchaseQuote
from billing.purchases import Purchase, record_purchase
from billing.tables import checkouts
from common.errors import Refused

PAGE_TTL = timedelta(minutes=30)  # how long the processor's page takes a payment
# An unpaid checkout is kept a day past its page's expiry (a processor's late notification
# still finds it), then pruned by housekeeping; a paid one stays with its purchase.
UNPAID_KEPT = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Checkout:
    id: str
    account_id: str
    quote: PurchaseQuote
    status: str
    expires_at: datetime
    purchase_id: str | None

    def public(self) -> dict:
        q = self.quote
        return {"id": self.id, "credits": q.credits, "price_cents": q.price_cents,
                "fee_cents": q.fee_cents, "total_cents": q.total_cents, "status": self.status,
                "expires_at": self.expires_at.isoformat(), "purchase_id": self.purchase_id}


@dataclass(frozen=True, slots=True)
class Completed:
    checkout: Checkout
    purchase: Purchase
    fresh: bool  # this call credited it (False: an earlier confirmation had)


async def open_checkout(conn: AsyncConnection, *, account_id: str, quote: PurchaseQuote,
                        now: datetime) -> Checkout:
    checkout = Checkout(secrets.token_hex(16), account_id, quote, "open", now + PAGE_TTL, None)
    await conn.execute(checkouts.insert().values(
        id=checkout.id, account_id=account_id, credits=quote.credits,
        price_cents=quote.price_cents, fee_cents=quote.fee_cents, total_cents=quote.total_cents,
        status="open", created_at=now, expires_at=checkout.expires_at))
    return checkout


async def get(conn: AsyncConnection, checkout_id: str, account_id: str | None = None
              ) -> Checkout:
    """The checkout; `account_id`: only if it is that account's (else not_found, as for one
    that does not exist: another family's checkout ids are not confirmed to exist)."""
    row = (await conn.execute(select(checkouts).where(checkouts.c.id == checkout_id))).first()
    if row is None or (account_id is not None and row.account_id != account_id):
        raise Refused("not_found", "No such checkout.")
    return Checkout(row.id, row.account_id,
                    PurchaseQuote(row.credits, row.price_cents, row.fee_cents, row.total_cents),
                    row.status, row.expires_at, row.purchase_id)


async def complete(conn: AsyncConnection, confirmed: Confirmed, now: datetime,
                   account_id: str | None = None) -> Completed:
    """`account_id`: only that account's checkout (the browser's return), else any (the
    processor's own notification)."""
    checkout = await get(conn, confirmed.checkout_id, account_id)
    if confirmed.charge.amount_cents != checkout.quote.total_cents:
        # Signed by the processor yet for another amount: a processor fault, never credited.
        raise Refused("confirmation_mismatch",
                      "The payment does not match this checkout; nothing was credited.")
    purchase = await record_purchase(conn, account_id=checkout.account_id, quote=checkout.quote,
                                     charge=confirmed.charge, key=f"checkout:{checkout.id}",
                                     now=now)
    flipped = await conn.execute(update(checkouts).where(
        checkouts.c.id == checkout.id, checkouts.c.status == "open")
        .values(status="paid", purchase_id=purchase.id, paid_at=now))
    paid = Checkout(checkout.id, checkout.account_id, checkout.quote, "paid",
                    checkout.expires_at, purchase.id)
    return Completed(paid, purchase, flipped.rowcount == 1)


async def prune(conn: AsyncConnection, now: datetime, limit: int) -> int:
    """Delete up to `limit` unpaid checkouts past UNPAID_KEPT; how many went."""
    old = select(checkouts.c.id).where(checkouts.c.status == "open",
                                       checkouts.c.expires_at < now - UNPAID_KEPT).limit(limit)
    gone = await conn.execute(delete(checkouts).where(checkouts.c.id.in_(old)))
    return gone.rowcount
