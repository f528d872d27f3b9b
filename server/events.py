"""The per-user event stream: every change a user must see, numbered gap-free per user.

An event is written with the user's next sequence number in the same transaction as the change
it reports, so it exists exactly when the change does. After the commit a signal `{seq}` goes
through the broker on the user's channel; a lost signal only delays delivery, because the
gateway reads the events themselves from the store. A client that reconnects asks for
everything after its last seq (`since`) and gets it in order, or `reset` when those events
were pruned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.broker import Broker, BrokerUnavailable
from server.schema import event_heads, events, messages
from store import EVENT_WATCHERS, Statement, insert_new

log = logging.getLogger("kinwire.events")


def channel(account_id: str) -> str:
    return f"user:{account_id}"


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: str
    data: dict[str, Any]


async def lock_streams(conn: AsyncConnection, account_ids: list[str]) -> None:
    """Take the stream heads of everyone a transaction will write events for, in id order,
    before writing any of their events (after the ledger rows, the order a send takes them in:
    `emit_many`). Two transactions that each write to two users' streams (A messages B
    while B messages A) would otherwise lock the heads in opposite orders and deadlock on
    PostgreSQL; a missing head is made at 0 (the same as no head)."""
    h = event_heads
    for account_id in sorted(set(account_ids)):
        touched = await conn.execute(h.update().where(h.c.account_id == account_id)
                                     .values(last_seq=h.c.last_seq))
        if touched.rowcount == 0:
            await conn.execute(insert_new(h, "account_id").values(
                account_id=account_id, last_seq=0, pruned_through=0))


# emit_many()'s statements, compiled once and run as driver SQL (store/statement.py): every
# send and billed minute runs them, and SQLAlchemy's per-statement machinery cost more CPU than
# the database did.
_BUMP = Statement(event_heads.update().where(event_heads.c.account_id == bindparam("account_id"))
                  .values(last_seq=event_heads.c.last_seq + bindparam("n"))
                  .returning(event_heads.c.last_seq))
_MAKE_HEAD = Statement(insert_new(event_heads, "account_id").values(
    account_id=bindparam("account_id"), last_seq=bindparam("n"), pruned_through=0))
_INSERT = Statement(events.insert().values(
    {name: bindparam(name) for name in ("account_id", "seq", "type", "data", "at")}))


async def _reserve(conn: AsyncConnection, counts: dict[str, int]) -> dict[str, int]:
    """Take `counts[a]` consecutive seqs of each account's stream with ONE statement per
    account, in id order (as lock_streams: no deadlock with other writers); returns each
    account's first seq."""
    first: dict[str, int] = {}
    for account_id in sorted(counts):
        n = counts[account_id]
        while True:
            params = {"account_id": account_id, "n": n}
            bumped = await _BUMP.first(conn, params)
            if bumped is not None:
                last = bumped.last_seq
                break
            if await _MAKE_HEAD.run(conn, params) == 1:
                last = n
                break
            # another transaction made the head first: bump it
        first[account_id] = last - n + 1
    return first


@dataclass
class Outbox:
    """Events written in one transaction, signalled through the broker after it commits."""

    written: list[tuple[str, int]] = field(default_factory=list)
    # (account_id, Event) of this outbox's events, for the feeds of this process
    kept: list[tuple[str, Event]] = field(default_factory=list)

    async def emit(self, conn: AsyncConnection, account_id: str, kind: str,
                   data: dict[str, Any], at: datetime) -> int:
        await self.emit_many(conn, [(account_id, kind, data)], at)
        return self.written[-1][1]

    async def emit_many(self, conn: AsyncConnection, items: list[tuple[str, str, dict[str, Any]]],
                        at: datetime) -> None:
        """Several events (account_id, type, data), each user's in the given order: one
        head bump per user, in id order as lock_streams takes them (so a send needs no
        lock_streams first), and one multi-row insert, instead of two statements per event."""
        counts: dict[str, int] = {}
        for account_id, _, _ in items:
            counts[account_id] = counts.get(account_id, 0) + 1
        nxt = await _reserve(conn, counts)
        rows = []
        for account_id, kind, data in items:
            seq = nxt[account_id]
            nxt[account_id] = seq + 1
            rows.append({"account_id": account_id, "seq": seq, "type": kind,
                         "data": _stored(kind, data), "at": at})
            self.written.append((account_id, seq))
            self.kept.append((account_id, Event(seq, kind, data)))
        await _INSERT.run_many(conn, rows)
        # The store's event watchers (the email notifier), in this transaction: their writes
        # commit or roll back with the events.
        for watcher in conn.sync_connection.get_execution_options().get(EVENT_WATCHERS, ()):
            await watcher.on_events(conn, items, at)

    async def signal(self, broker: Broker) -> None:
        """Call after the commit. A broker outage is logged, not raised: the events are stored
        and every client gets them when it resyncs."""
        for account_id, event in self.kept:
            broker.recent.add(account_id, event)  # for this process's feeds (broker/recent.py)
        self.kept.clear()
        latest: dict[str, int] = {}
        for account_id, seq in self.written:
            latest[account_id] = max(seq, latest.get(account_id, 0))
        self.written.clear()
        for account_id, seq in latest.items():
            try:
                await broker.publish(channel(account_id), {"seq": seq})
            except BrokerUnavailable:
                log.warning("broker unavailable: event signal for seq %d deferred to resync", seq)


async def head(conn: AsyncConnection, account_id: str) -> tuple[int, int]:
    """(last_seq, pruned_through) of a user's stream; (0, 0) before the first event."""
    row = (await conn.execute(select(event_heads.c.last_seq, event_heads.c.pruned_through)
                              .where(event_heads.c.account_id == account_id))).first()
    return (row.last_seq, row.pruned_through) if row else (0, 0)


async def since(conn: AsyncConnection, account_id: str, after: int, limit: int) -> list[Event]:
    rows = (await conn.execute(
        select(events.c.seq, events.c.type, events.c.data)
        .where(events.c.account_id == account_id, events.c.seq > after)
        .order_by(events.c.seq).limit(limit))).all()
    referenced = {r.data[BODY_REF] for r in rows if BODY_REF in r.data}
    if not referenced:
        return [Event(r.seq, r.type, r.data) for r in rows]
    bodies = dict((await conn.execute(select(messages.c.id, messages.c.body)
                                      .where(messages.c.id.in_(referenced)))).all())
    return [Event(r.seq, r.type, _with_body(r.data, bodies)) for r in rows]


# A message's body (up to KINWIRE_MESSAGE_CHARS_MAX, 30,000 characters) was copied into every
# event about it: the sender's and the recipient's `message.new`, and each `message.status`.
# A body longer than this is stored once, in `messages`, and the event row keeps a reference
# that since() resolves with one query a page. Bodies never change, so it reads the same.
BODY_INLINE_CHARS_MAX = 512
BODY_REF = "body_ref"


def _stored(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    body = data.get("body")
    if not kind.startswith("message.") or not isinstance(body, str) \
            or len(body) <= BODY_INLINE_CHARS_MAX:
        return data
    stored = {k: v for k, v in data.items() if k != "body"}
    stored[BODY_REF] = data["id"]
    return stored


def _with_body(data: dict[str, Any], bodies: dict[str, str]) -> dict[str, Any]:
    if BODY_REF not in data:
        return data
    shown = {k: v for k, v in data.items() if k != BODY_REF}
    shown["body"] = bodies.get(data[BODY_REF])
    return shown


async def prune(conn: AsyncConnection, older_than: datetime, limit: int | None = None,
                *, table: Any = events) -> int:
    """Delete events written before `older_than`, remembering per user how far it went; at
    most about `limit` of them (the oldest first, through ix_events_at), so that one call is
    one short transaction (server/housekeeping.py calls it until it prunes fewer). `table`: a
    partition of its own on PostgreSQL (server/event_partitions.py), where weeks are dropped
    whole instead."""
    oldest = select(table.c.account_id, table.c.seq).where(table.c.at < older_than)
    if limit is not None:
        oldest = oldest.order_by(table.c.at).limit(limit)
    through: dict[str, int] = {}
    for account_id, seq in (await conn.execute(oldest)).all():
        through[account_id] = max(seq, through.get(account_id, 0))
    pruned = 0
    # Streams in id order, the order senders lock their heads in (lock_streams): no deadlock.
    for account_id, seq in sorted(through.items()):
        await conn.execute(event_heads.update().where(event_heads.c.account_id == account_id,
                                                      event_heads.c.pruned_through < seq)
                           .values(pruned_through=seq))
        gone = await conn.execute(delete(table).where(table.c.account_id == account_id,
                                                      table.c.seq <= seq))
        pruned += gone.rowcount
    return pruned
