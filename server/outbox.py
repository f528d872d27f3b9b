"""The outbox both email (server/mail.py) and Web Push (server/push.py) send from.

A row is written in the transaction of the change it reports, so it exists exactly when the
change does. Every serving process runs a sender over the same table: a pass reads the due
rows, claims each with a conditional UPDATE (two processes never send one row at once; the
try is counted when claimed, so a process that dies mid-send used one, and its claim lapses
after CLAIM_S), sends what it claimed and settles each: sent, retried after a doubling wait,
or given up after `attempts_max` tries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from store import Record, Store

log = logging.getLogger("kinwire.outbox")

CLAIM_S = 120.0  # a claimed row is its sender's for this long: longer than one send


def due(table: Table, now: datetime) -> Any:
    """The condition of a row waiting to be sent now."""
    return (table.c.sent_at.is_(None)) & (table.c.failed_at.is_(None)) & (table.c.due_at <= now)


async def claim(store: Store, table: Table, rows: list[Any], now: datetime) -> list[Any]:
    """The rows of `rows` (read as due) that this process claimed; another's are left."""
    mine: list[Any] = []
    if not rows:
        return mine
    t = table
    async with store.write() as conn:
        for row in rows:
            took = await conn.execute(t.update().where(
                t.c.id == row.id, t.c.due_at == row.due_at, t.c.sent_at.is_(None),
                t.c.failed_at.is_(None))
                .values(due_at=now + timedelta(seconds=CLAIM_S), attempts=t.c.attempts + 1))
            if took.rowcount == 1:
                mine.append(row)
    return mine


def settled(row: Record, error: str | None, now: datetime, *, attempts_max: int, backoff_s: float,
            give_up: bool = False) -> tuple[dict[str, Any], str]:
    """The values that settle a claimed row (`row` as read before its claim) and what became of
    it: "sent", "given up" (`give_up`, or its last try) or "retry" (after backoff_s doubling
    with each try)."""
    tries = row.attempts + 1
    if error is None:
        return {"sent_at": now, "last_error": None}, "sent"
    if give_up or tries >= attempts_max:
        return {"failed_at": now, "last_error": error[:200]}, "given up"
    wait = timedelta(seconds=backoff_s * 2 ** (tries - 1))
    return {"due_at": now + wait, "last_error": error[:200]}, "retry"


async def run(pass_once: Callable[[], Awaitable[int]], stop: asyncio.Event, *, batch: int,
              poll_s: float, what: str, wake: asyncio.Event | None = None) -> None:
    """Passes until `stop`: at once again after a full batch, else after `poll_s` (or when
    `wake` is set). A failed pass (the store or the far end down) is logged and tried again."""
    while not stop.is_set():
        try:
            sent = await pass_once()
        except Exception:
            log.warning("%s pass failed", what, exc_info=True)
            sent = 0
        if sent < batch:
            if wake is not None:
                wake.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (stop, wake) if e is not None]
            await asyncio.wait(waits, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()


async def prune(conn: AsyncConnection, table: Table, now: datetime, keep: timedelta,
                limit: int) -> int:
    """At most `limit` sent or given-up rows older than `keep` (one short transaction;
    server/housekeeping.py calls it until it prunes fewer)."""
    t = table
    old = (await conn.execute(select(t.c.id).where(
        t.c.created_at < now - keep, or_(t.c.sent_at.is_not(None), t.c.failed_at.is_not(None)))
        .limit(limit))).scalars().all()
    if old:
        await conn.execute(t.delete().where(t.c.id.in_(old)))
    return len(old)
