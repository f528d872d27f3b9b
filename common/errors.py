"""The one error model: a refusal carries a stable code and a message, never a transport's status.

Codes are stable snake_case words that clients may branch on (TigerBeetle's result codes:
`insufficient_credits`, `exists_with_different_amount`); messages are for people; `details`
(optional) are plain values a client may use, such as `retry_after_s`. Each layer raises this or
a subclass of its own (billing.ledger.LedgerError, billing.gateway.CardError,
signalling.visits.VisitError, ...) and catches its own kinds where it must decide something.
The edges translate, each in one place: the HTTP edge maps codes to statuses
(server/http/errors.py), the WebSocket endpoint answers `{"type": "error", code, message}`
(server/gateway/endpoint.py). Clients see `{"error": {"code", "message", "details"?}}`.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}
