"""The one error shape clients see: HTTP status + {"error": {"code", "message"}}.

Codes are stable snake_case words that clients may branch on; messages are for people.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def unauthorized(message: str = "Log in first.") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "You may not do that.") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(what: str = "That") -> ApiError:
    return ApiError(404, "not_found", f"{what} was not found.")


def invalid(message: str, **details: Any) -> ApiError:
    return ApiError(422, "invalid_input", message, **details)


def ledger_error(exc: Exception) -> ApiError:
    """A refused ledger transfer (billing.ledger.LedgerError) as the client sees it."""
    code = getattr(exc, "code", "ledger_error")
    return ApiError(LEDGER_STATUS.get(code, 409), code, getattr(exc, "message", str(exc)))


# Result codes of the ledger and the gateway, mapped onto HTTP statuses.
LEDGER_STATUS = {
    "insufficient_credits": 402,
    "exists_with_different_amount": 409,
    "account_not_found": 404,
    "invalid_amount": 422,
    "same_account": 422,
}
