"""What a purchase of credits charges (1 credit = 1 US cent). What things cost in credits is
each facility's setting (server/facilities.py, `Prices`, served in GET /facilities)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import Refused


@dataclass(frozen=True, slots=True)
class PurchaseQuote:
    credits: int
    price_cents: int
    fee_cents: int
    total_cents: int


class PricingError(Refused):
    """A purchase of an amount that cannot be bought."""


def quote_purchase(credits: int, *, block: int, fee_cents: int, credits_max: int) -> PurchaseQuote:
    if credits < block or credits % block:
        raise PricingError("invalid_amount", f"credits are bought in multiples of {block}")
    if credits > credits_max:
        raise PricingError("invalid_amount", f"one purchase buys at most {credits_max} credits")
    return PurchaseQuote(credits, credits, fee_cents, credits + fee_cents)

