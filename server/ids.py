"""Opaque ids: a short type prefix and 96 random bits, so an id says what it names in logs."""

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
