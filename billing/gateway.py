"""The payment-gateway port and the built-in sandbox gateway.

Contract: `charge` either returns a Charge (the money was taken, exactly once per
idempotency key) or raises CardError with a stable code and `declined=True` (a 402 at the HTTP
edge; our own checks of the card are a 422). A gateway never sees more of the card
than it needs and Kinwire stores only the brand and the last four digits.

The sandbox checks the number's Luhn digit and brand, the expiry and the CVC length, and
declines by test number (documented in docs/payments.md):
- 4000000000000002: `card_declined` (generic decline)
- 4000000000009995: `card_declined` (insufficient funds)
- 4000000000000069: `card_expired` whatever the date given
Any other valid Visa, MasterCard or American Express number is accepted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from common.errors import Refused

# Each decline says what the family can do next: the bank's word alone left them guessing.
DECLINED = {
    "4000000000000002": ("card_declined", "Your bank declined the card. Try another card, or "
                         "call the number on the back of this one; nothing was charged."),
    "4000000000009995": ("card_declined", "Your bank declined the card: not enough funds. Try "
                         "another card or fewer credits; nothing was charged."),
    "4000000000000069": ("card_expired", "The card has expired. Use a card with a later expiry "
                         "date; nothing was charged."),
}


class CardError(Refused):
    """The card was refused: `declined` by its issuer (a gateway raises it so), or not a card
    we take (the number, brand, expiry or security code fails our own checks)."""

    def __init__(self, code: str, message: str, *, declined: bool = False) -> None:
        super().__init__(code, message)
        self.declined = declined


@dataclass(frozen=True, slots=True)
class Card:
    number: str
    exp_month: int
    exp_year: int
    cvc: str
    name: str


@dataclass(frozen=True, slots=True)
class Charge:
    gateway_ref: str
    brand: str
    last4: str
    amount_cents: int


class PaymentGateway(Protocol):
    async def charge(self, card: Card, amount_cents: int, idempotency_key: str,
                     now: datetime) -> Charge: ...


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        digit = int(ch)
        if i % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def card_brand(number: str) -> str | None:
    if number[0] == "4" and len(number) in (13, 16, 19):
        return "visa"
    if len(number) == 16 and (51 <= int(number[:2]) <= 55 or 2221 <= int(number[:4]) <= 2720):
        return "mastercard"
    if len(number) == 15 and number[:2] in ("34", "37"):
        return "amex"
    return None


def check_card(card: Card, now: datetime) -> str:
    """Validate a card as any gateway would before charging; returns its brand."""
    number = card.number.replace(" ", "").replace("-", "")
    # isascii(): str.isdigit() also accepts digits such as "²" that int() cannot read.
    if not (number.isascii() and number.isdigit()) or not 12 <= len(number) <= 19:
        raise CardError("invalid_card", "The card number must be 12 to 19 digits.")
    if not luhn_ok(number):
        raise CardError("invalid_card", "The card number is not valid (check digit).")
    brand = card_brand(number)
    if brand is None:
        raise CardError("unsupported_card", "Only Visa, MasterCard and American Express.")
    if not 1 <= card.exp_month <= 12:
        raise CardError("invalid_card", "The expiry month must be 1 to 12.")
    if (card.exp_year, card.exp_month) < (now.year, now.month):
        raise CardError("card_expired", "The card has expired.")
    if card.exp_year > now.year + 20:
        raise CardError("invalid_card", "The expiry year is too far ahead.")
    want = 4 if brand == "amex" else 3
    if len(card.cvc) != want or not card.cvc.isdigit():
        raise CardError("invalid_card", f"The security code must be {want} digits.")
    return brand


class SandboxGateway:
    """Accepts or declines by test card number; nothing leaves the process."""

    async def charge(self, card: Card, amount_cents: int, idempotency_key: str,
                     now: datetime) -> Charge:
        brand = check_card(card, now)
        number = card.number.replace(" ", "").replace("-", "")
        if number in DECLINED:
            code, message = DECLINED[number]
            raise CardError(code, message, declined=True)
        # The same key always yields the same reference, as a real gateway's would.
        ref = "sbx_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        return Charge(ref, brand, number[-4:], amount_cents)
