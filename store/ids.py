"""Opaque ids: a short type prefix, so an id says what it names in logs, and 96 bits.

`new_id` is 96 random bits. `ordered_id` (rows written on hot paths: messages, ledger transfers)
starts with the time in milliseconds and ends with 52 random bits: consecutive rows then land
beside each other in the primary-key and unique indexes instead of on random pages, which
halved SQLite's COMMIT cost per send (fewer pages dirtied per batch; docs/BENCHMARKS.md,
"Durable sends"). Such an id tells its creation time to the millisecond; the rows that get one
show their time anyway (created_at, at). Neither kind of id is a secret: every access checks
the caller's right to the row.
"""

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def ordered_id(prefix: str = "") -> str:
    stamp = f"{time.time_ns() // 1_000_000:011x}{secrets.randbits(52):013x}"
    return f"{prefix}_{stamp}" if prefix else stamp
