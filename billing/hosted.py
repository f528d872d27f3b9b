"""Hosted checkout: the card is typed on the payment processor's page, never on Kinwire's.

The flow (docs/payments.md, "Hosted checkout"):
1. Kinwire opens a checkout (billing/checkout.py: a row holding the quote) and asks the
   processor for the page the family's browser goes to (`HostedPayments.page_url`).
2. The family pays there. The processor charges the card and hands back a *confirmation*,
   signed by the processor, naming the checkout, the amount charged and the card's brand and
   last four digits. It reaches Kinwire two ways on purpose: from the processor itself (its
   notification: the family may close the tab the moment it has paid) and through the
   browser's return to the app. Either completes the checkout, once.
3. Kinwire believes only the signature (`HostedPayments.confirmation`): a browser can replay a
   confirmation, or bring one for another amount or checkout, but cannot make one.

`SandboxPayments` is the built-in processor: a processor of its own inside the process, with
its own name on its page (/sandbox-pay/). Its session and confirmation tokens are HMAC-SHA256
under its secret; it charges by SandboxGateway's test numbers (docs/payments.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from billing.gateway import Card, CardError, Charge, SandboxGateway
from common.errors import Refused

PAGE_PATH = "/sandbox-pay/"


class ConfirmationError(Refused):
    """A confirmation that is not the processor's: forged, altered or for another checkout."""

    def __init__(self) -> None:
        super().__init__("invalid_confirmation", "This payment confirmation is not valid.")


@dataclass(frozen=True, slots=True)
class Confirmed:
    checkout_id: str
    charge: Charge


class HostedPayments(Protocol):
    name: str  # shown to the family before it leaves for the processor's page

    def page_url(self, checkout_id: str, amount_cents: int, description: str,
                 expires_at: datetime) -> str: ...

    def confirmation(self, token: str) -> Confirmed: ...


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SandboxPayments:
    """The sandbox processor. `secret`: its signing key; several processes behind one address
    must share it (KINWIRE_SANDBOX_PAY_SECRET), or a confirmation signed by one is refused by
    another (the processor's own notification still completes the checkout where it paid)."""

    name = "Sandbox Payments"  # a proper name: the apps show it as it is, in any language

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._cards = SandboxGateway()

    # --- tokens -------------------------------------------------------------------------------

    def _sign(self, kind: str, fields: dict[str, Any]) -> str:
        body = _b64(json.dumps({"k": kind, **fields}, separators=(",", ":")).encode())
        mac = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    def _open(self, kind: str, token: str) -> dict[str, Any]:
        body, _, mac = token.partition(".")
        want = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        try:
            ok = hmac.compare_digest(_unb64(mac), want)
            fields = json.loads(_unb64(body)) if ok else None
        except (ValueError, UnicodeDecodeError):
            fields = None
        if not isinstance(fields, dict) or fields.get("k") != kind:
            raise ConfirmationError()
        return fields

    # --- Kinwire's side (the port) ----------------------------------------------------------------

    def page_url(self, checkout_id: str, amount_cents: int, description: str,
                 expires_at: datetime) -> str:
        # In the fragment: never sent to a server, so never in an access log.
        session = self._sign("session", {"c": checkout_id, "a": amount_cents, "d": description,
                                         "e": int(expires_at.timestamp())})
        return f"{PAGE_PATH}#{session}"

    def confirmation(self, token: str) -> Confirmed:
        f = self._open("paid", token)
        try:
            charge = Charge(str(f["r"]), str(f["b"]), str(f["l"]), int(f["a"]))
            return Confirmed(str(f["c"]), charge)
        except (KeyError, TypeError, ValueError):
            raise ConfirmationError() from None

    # --- the processor's own page -------------------------------------------------------------

    def session(self, token: str, now: datetime) -> dict[str, Any]:
        """What the page shows: the amount and the description Kinwire signed."""
        f = self._open("session", token)
        if datetime.fromtimestamp(int(f["e"]), UTC) <= now:
            raise CardError("checkout_expired", "This payment page has expired. Go back to "
                            "Kinwire and start the purchase again; nothing was charged.")
        return {"checkout_id": f["c"], "amount_cents": f["a"], "description": f["d"],
                "processor": self.name}

    async def pay(self, token: str, card: Card, now: datetime) -> str:
        """Charge the card for the session's amount; the signed confirmation. Charged under the
        checkout's id, so paying the same page twice charges once."""
        s = self.session(token, now)
        charge = await self._cards.charge(card, s["amount_cents"], f"checkout:{s['checkout_id']}",
                                          now)
        return self._sign("paid", {"c": s["checkout_id"], "a": charge.amount_cents,
                                   "r": charge.gateway_ref, "b": charge.brand,
                                   "l": charge.last4})
