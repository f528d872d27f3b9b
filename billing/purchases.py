"""Buying credits with a card: one gateway charge, two transfers, one purchase record.

The card money enters through the card-sales account: `credits` go to the buyer and the fee to
the fees account, so card sales end at minus what cards were charged and the ledger still sums
to zero. The gateway is called with the same idempotency key as the ledger transfers, so a
retry after a crash between the charge and the commit charges the card once (a real gateway
deduplicates by key) and records it once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger
from billing.gateway import Card, Charge, PaymentGateway
from billing.pricing import PurchaseQuote
from billing.tables import purchases


@dataclass(frozen=True, slots=True)
class Purchase:
    id: str
    credits: int
    price_cents: int
    fee_cents: int
    total_cents: int
    card_brand: str
    card_last4: str
    at: datetime

    def public(self) -> dict:
        return {"id": self.id, "credits": self.credits, "price_cents": self.price_cents,
                "fee_cents": self.fee_cents, "total_cents": self.total_cents,
                "card_brand": self.card_brand, "card_last4": self.card_last4,
                "created_at": self.at.isoformat()}


async def buy_credits(conn: AsyncConnection, gateway: PaymentGateway, *, account_id: str,
                      quote: PurchaseQuote, card: Card, key: str, now: datetime) -> Purchase:
    """The direct card API (POST /purchases): Kinwire passes the card to the gateway."""
    charge = await gateway.charge(card, quote.total_cents, key, now)
    return await record_purchase(conn, account_id=account_id, quote=quote, charge=charge,
                                 key=key, now=now)


async def record_purchase(conn: AsyncConnection, *, account_id: str, quote: PurchaseQuote,
                          charge: Charge, key: str, now: datetime) -> Purchase:
    """Credit what `charge` paid for, once per `key`: a repeat returns the first purchase."""
    purchase = Purchase(secrets.token_hex(12), quote.credits, quote.price_cents, quote.fee_cents,
                        quote.total_cents, charge.brand, charge.last4, now)
    credited = await ledger.transfer(
        conn, key=f"{key}:credits", debit=ledger.SystemAccount.CARD_SALES, credit=account_id,
        amount=quote.credits, kind="purchase", ref=purchase.id, at=now)
    if credited.duplicate:
        return await _load(conn, credited.ref)
    if quote.fee_cents:
        await ledger.transfer(conn, key=f"{key}:fee", debit=ledger.SystemAccount.CARD_SALES,
                              credit=ledger.SystemAccount.FEES, amount=quote.fee_cents,
                              kind="purchase_fee", ref=purchase.id, at=now)
    await conn.execute(purchases.insert().values(
        id=purchase.id, account_id=account_id, credits=purchase.credits,
        price_cents=purchase.price_cents, fee_cents=purchase.fee_cents,
        total_cents=purchase.total_cents, card_brand=purchase.card_brand,
        card_last4=purchase.card_last4, gateway_ref=charge.gateway_ref, at=now))
    return purchase


async def _load(conn: AsyncConnection, purchase_id: str | None) -> Purchase:
    row = (await conn.execute(select(purchases).where(purchases.c.id == purchase_id))).one()
    return Purchase(row.id, row.credits, row.price_cents, row.fee_cents, row.total_cents,
                    row.card_brand, row.card_last4, row.at)
