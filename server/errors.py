"""The refusals the server's own code raises most, by name (common/errors.py is the model:
a stable code and a message; server/http/errors.py gives each code its HTTP status)."""

from __future__ import annotations

from typing import Any

from common.errors import Refused


def unauthorized(message: str = "Log in first.") -> Refused:
    return Refused("unauthorized", message)


def forbidden(message: str = "You may not do that.") -> Refused:
    return Refused("forbidden", message)


def not_found(what: str = "That") -> Refused:
    return Refused("not_found", f"{what} was not found.")


def invalid(message: str, **details: Any) -> Refused:
    return Refused("invalid_input", message, **details)
