"""What things cost, in credits (1 credit = 1 US cent), and what a purchase charges."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PRICES = {"message": 50, "photo": 100, "visit_minute": 50}


@dataclass(frozen=True, slots=True)
class PurchaseQuote:
    credits: int
    price_cents: int
    fee_cents: int
    total_cents: int


class PricingError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def quote_purchase(credits: int, *, block: int, fee_cents: int, credits_max: int) -> PurchaseQuote:
    if credits < block or credits % block:
        raise PricingError("invalid_amount", f"credits are bought in multiples of {block}")
    if credits > credits_max:
        raise PricingError("invalid_amount", f"one purchase buys at most {credits_max} credits")
    return PurchaseQuote(credits, credits, fee_cents, credits + fee_cents)


def message_price(prices: dict[str, int], photos: int) -> int:
    return prices["message"] + photos * prices["photo"]
