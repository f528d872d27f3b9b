"""HTTP idempotency (API.md): a repeat of a credit-moving request with the same key and body
returns the first result; the same key with another body is 409 `idempotency_conflict`.

The key is claimed by inserting its row first thing in the request's write transaction. On
PostgreSQL a concurrent claim of the same key blocks on that row until the first transaction
ends, then sees the stored response; on SQLite the write lock serialises them outright. Only
successful responses are stored: a request that fails rolls back its claim with everything
else, so a retry runs afresh (a declined card may be retried after fixing it).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server.schema import idempotency


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim(conn: AsyncConnection, *, account_id: str, key: str, fingerprint: str,
                now: datetime) -> tuple[int, Any] | None:
    """None when the key is new (and now held); else the stored (status, body) to replay."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    claimed = await conn.execute(dialect.insert(idempotency).values(
        account_id=account_id, key=key, request_hash=fingerprint, status=0, response={},
        at=now).on_conflict_do_nothing(index_elements=["account_id", "key"]))
    if claimed.rowcount == 1:
        return None
    row = (await conn.execute(select(idempotency).where(
        idempotency.c.account_id == account_id, idempotency.c.key == key))).one()
    if row.request_hash != fingerprint:
        raise Refused("idempotency_conflict",
                       "This Idempotency-Key was used with a different request.")
    return row.status, row.response


async def store(conn: AsyncConnection, *, account_id: str, key: str, status: int,
                body: Any) -> None:
    await conn.execute(idempotency.update().where(
        idempotency.c.account_id == account_id, idempotency.c.key == key)
        .values(status=status, response=body))
