"""Messages: send (charged in the same transaction that stores it), open (read receipt; a COD
message is paid by its recipient here, once), remove from one's own view, and list.

Who sees what: the sender sees all of their message; the recipient sees a delivered message,
but a COD message's body and photos only once it is paid; staff see their facility's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger
from billing.ledger import SystemAccount
from common.errors import Refused
from server import connections, facilities
from server.auth import Principal
from server.errors import not_found
from server.events import Outbox, lock_streams
from server.schema import connections as connections_table
from server.schema import facilities as facilities_table
from server.schema import messages, photos
from store import Record, Statement, insert_new
from store.ids import ordered_id


@dataclass(frozen=True)
class Draft:
    to: str
    body: str
    photo_ids: tuple[str, ...]
    cod: bool
    key: str

    def fingerprint(self) -> str:
        raw = "\x1f".join([self.to, self.body, ",".join(self.photo_ids), str(self.cod)])
        return hashlib.sha256(raw.encode()).hexdigest()


def watched(body: str, keywords: list[str]) -> str | None:
    """The first watched word or phrase the text contains as whole words, or None."""
    text = body.casefold()
    for word in keywords:
        if re.search(rf"(?<!\w){re.escape(word.casefold())}(?!\w)", text):
            return word
    return None


async def photo_ids_by_message(conn: AsyncConnection,
                               message_ids: list[str]) -> dict[str, list[str]]:
    """Every listed message's photo ids in one query (not one query per message)."""
    found: dict[str, list[str]] = {m: [] for m in message_ids}
    if message_ids:
        rows = await conn.execute(select(photos.c.message_id, photos.c.id)
                                  .where(photos.c.message_id.in_(message_ids))
                                  .order_by(photos.c.message_id, photos.c.position))
        for message_id, photo_id in rows:
            found[message_id].append(photo_id)
    return found


def views(rows: list[Any], viewer: Principal, ids: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [view(r, viewer, ids[r.id]) for r in rows]


async def photo_ids_of(conn: AsyncConnection, message_id: str) -> list[str]:
    rows = await conn.execute(select(photos.c.id).where(photos.c.message_id == message_id)
                              .order_by(photos.c.position))
    return list(rows.scalars())


def view(row: Record, viewer: Principal, photo_ids: list[str]) -> dict[str, Any]:
    mine = viewer.account_id == row.sender_id
    locked = not mine and viewer.role != "staff" and viewer.role != "admin" \
        and row.cod and row.paid_by is None
    shown = {"id": row.id, "from": row.sender_id, "to": row.recipient_id,
             "created_at": row.created_at.isoformat(), "status": row.status, "cod": row.cod,
             "price": row.price, "paid": row.paid_by is not None, "locked": locked,
             "opened_at": row.opened_at.isoformat() if row.opened_at else None,
             "photo_count": row.photo_count}
    if not locked:
        shown["body"] = row.body
        shown["photo_ids"] = photo_ids
    if row.status == "rejected" and (mine or viewer.role in ("staff", "admin")):
        shown["reject_reason"] = row.reject_reason
    if viewer.role in ("staff", "admin"):
        shown["held_for"] = row.held_for
    return shown


async def get(conn: AsyncConnection, message_id: str) -> Record:
    row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
    if row is None:
        raise not_found("The message")
    return row


def _viewer_from(account_id: str, role: str) -> Principal:
    return Principal(account_id, role, None, "", "")


async def announce(conn: AsyncConnection, outbox: Outbox, row: Record, at: datetime,
                   *, new_for_recipient: bool, status_for_sender: bool) -> None:
    ids = await photo_ids_of(conn, row.id)
    if status_for_sender:
        await outbox.emit(conn, row.sender_id, "message.status",
                          view(row, _viewer_from(row.sender_id, "party"), ids), at)
    if new_for_recipient:
        await outbox.emit(conn, row.recipient_id, "message.new",
                          view(row, _viewer_from(row.recipient_id, "party"), ids), at)


# send()'s statements. Repeats (a send retried with its key) are rare, so the lookup by key
# stays a Core statement run by conn.execute; the rest are compiled once and run as driver SQL
# (store/statement.py), being on every send's path.
_BY_KEY = select(messages).where(messages.c.sender_id == bindparam("p_sender"),
                                 messages.c.client_key == bindparam("p_key"))
_c, _f = connections_table, facilities_table
_LINK_RULES = Statement(
    select(_c.c.facility_id, _f.c.settings, _c.c.status, _c.c.blocked_by)
    .join(_f, _f.c.id == _c.c.facility_id)
    .where(or_(and_(_c.c.family_id == bindparam("a"), _c.c.person_id == bindparam("b")),
               and_(_c.c.family_id == bindparam("b"), _c.c.person_id == bindparam("a")))))
_INSERT_COLUMNS = ("id", "facility_id", "sender_id", "recipient_id", "body", "photo_count",
                   "price", "cod", "status", "held_for", "paid_by", "client_key", "created_at",
                   "sender_removed", "recipient_removed")
_INSERT = Statement(insert_new(messages, "sender_id", "client_key").values(
    {name: bindparam(name) for name in _INSERT_COLUMNS}))


async def _existing(conn: AsyncConnection, sender: Principal, draft: Draft) -> Record:
    row = (await conn.execute(_BY_KEY, {"p_sender": sender.account_id,
                                        "p_key": draft.key})).first()
    if row is None:
        return None
    same = (row.recipient_id, row.body, tuple(await photo_ids_of(conn, row.id)), row.cod) == (
        draft.to, draft.body, draft.photo_ids, draft.cod)
    if not same:
        raise Refused("idempotency_conflict",
                       "This key was used for a different message.")
    return row


async def _attach_photos(conn: AsyncConnection, owner: str, message_id: str,
                         photo_ids: tuple[str, ...]) -> None:
    for position, photo_id in enumerate(photo_ids):
        attached = await conn.execute(photos.update().where(
            photos.c.id == photo_id, photos.c.owner_id == owner,
            photos.c.message_id.is_(None)).values(message_id=message_id, position=position))
        if attached.rowcount != 1:
            raise Refused("invalid_photo",
                           "A photo is not yours, does not exist or is already sent.")


async def _charge(conn: AsyncConnection, payer: str, row: Record, photo_count: int,
                  prices: dict[str, int], prefix: str, at: datetime) -> int | None:
    """Debit the payer; returns their balance after it when the debit's own UPDATE read it
    (None: nothing charged now, e.g. a repeat or a free message; read it if needed)."""
    balance = None
    parts = [(SystemAccount.MESSAGE_REVENUE, prices["message"], "message", "text")]
    if photo_count:
        parts.append((SystemAccount.PHOTO_REVENUE, prices["photo"] * photo_count, "photo",
                      "photos"))
    for revenue, amount, kind, part in parts:
        if amount <= 0:
            continue  # a facility may make messages free
        done = await ledger.transfer(conn, key=f"{prefix}:{row.id}:{part}", debit=payer,
                                     credit=revenue, amount=amount, kind=kind, ref=row.id,
                                     at=at)
        balance = done.debit_balance
    return balance


async def send(conn: AsyncConnection, outbox: Outbox, sender: Principal, draft: Draft,
               at: datetime) -> dict[str, Any]:
    # A repeat (same key) answers the first send even if the rules changed since: it is found
    # before any refusal below, and by the insert's conflict otherwise.
    refusal = None
    if draft.cod and sender.role != "person":
        refusal = Refused("forbidden", "Only an incarcerated person may send collect.")
    found = await _link_rules(conn, sender.account_id, draft.to)
    if found is None:
        refusal = Refused("not_connected", "You can message only an approved contact.")
    if refusal is not None:
        existing = await _existing(conn, sender, draft)
        if existing is None:
            raise refusal
        return view(existing, sender, await photo_ids_of(conn, existing.id))
    facility_id, rules = found
    hold_for = None
    if rules["review_mode"] == "hold":
        hold_for = "review"
    elif draft.photo_ids and rules["review_photos"]:
        hold_for = "photos"
    word = watched(draft.body, rules["keywords"])
    if word is not None:
        hold_for = f"keyword:{word}"
    prices = rules["prices"]
    # The row as stored, built here rather than read back (one statement less a send).
    row = Stored(
        id=ordered_id("msg"), facility_id=facility_id, sender_id=sender.account_id,
        recipient_id=draft.to, body=draft.body, photo_count=len(draft.photo_ids),
        price=prices["message"] + prices["photo"] * len(draft.photo_ids), cod=draft.cod,
        status="held" if hold_for else "delivered", held_for=hold_for,
        paid_by=None if draft.cod else sender.account_id, client_key=draft.key,
        created_at=at.astimezone(UTC), sender_removed=False, recipient_removed=False)
    claimed = await _INSERT.run(conn, row.values())
    if claimed == 0:  # a send with the same key was stored first (a repeat, or a race)
        existing = await _existing(conn, sender, draft)
        return view(existing, sender, await photo_ids_of(conn, existing.id))
    await _attach_photos(conn, sender.account_id, row.id, draft.photo_ids)
    balance = None
    if not draft.cod:
        balance = await _charge(conn, sender.account_id, row, len(draft.photo_ids), prices,
                                "msg", at)
        if balance is None:
            balance = await ledger.balance(conn, sender.account_id)
    # Ledger rows first (above), then the stream heads, in id order (emit_many): the order
    # every transaction takes them in, so two sends the opposite ways and a meter cannot
    # deadlock.
    ids = list(draft.photo_ids)
    items: list[tuple[str, str, dict[str, Any]]] = []
    if balance is not None:
        items.append((sender.account_id, "balance", {"balance": balance}))
    items.append((sender.account_id, "message.new", view(row, sender, ids)))
    if row.status == "delivered":
        items.append((draft.to, "message.new", view(row, _viewer_from(draft.to, "party"), ids)))
    await outbox.emit_many(conn, items, at)
    return view(row, sender, ids)


@dataclass(frozen=True, slots=True)
class Stored:
    """A new message row, as `select(messages)` would return it."""
    id: str
    facility_id: str
    sender_id: str
    recipient_id: str
    body: str
    photo_count: int
    price: int
    cod: bool
    status: str
    held_for: str | None
    paid_by: str | None
    client_key: str
    created_at: datetime
    sender_removed: bool
    recipient_removed: bool
    opened_at: datetime | None = None
    reject_reason: str | None = None

    def values(self) -> dict[str, Any]:
        """The values of send()'s INSERT (_INSERT_COLUMNS)."""
        return {name: getattr(self, name) for name in _INSERT_COLUMNS}


async def _link_rules(conn: AsyncConnection, a: str, b: str) -> tuple[str, Any] | None:
    """(facility id, facility settings) of the open connection between a and b, in one
    query (connections.approved_between, then facilities.get, joined); None if none is open
    (connections.closed_because)."""
    row = await _LINK_RULES.first(conn, {"a": a, "b": b})
    if row is None or connections.closed_because(row.status, row.blocked_by) is not None:
        return None
    return row.facility_id, row.settings


async def open_message(conn: AsyncConnection, outbox: Outbox, reader: Principal,
                       message_id: str, at: datetime) -> dict[str, Any]:
    row = await get(conn, message_id)
    if row.recipient_id != reader.account_id or row.status != "delivered":
        raise not_found("The message")
    if row.cod and row.paid_by is None:
        facility = await facilities.get(conn, row.facility_id)
        await _charge(conn, reader.account_id, row, row.photo_count,
                      facility.settings["prices"], "cod", at)
        # Conditional, so two opens racing pay once: the second finds it paid (and the ledger
        # keys above already made its debit a duplicate).
        await conn.execute(messages.update().where(messages.c.id == row.id,
                                                   messages.c.paid_by.is_(None))
                           .values(paid_by=reader.account_id))
        await lock_streams(conn, [row.sender_id, reader.account_id])  # after the ledger row
        await outbox.emit(conn, reader.account_id, "balance",
                          {"balance": await ledger.balance(conn, reader.account_id)}, at)
    if row.opened_at is None:
        await conn.execute(messages.update().where(messages.c.id == row.id,
                                                   messages.c.opened_at.is_(None))
                           .values(opened_at=at))
        await lock_streams(conn, [row.sender_id, reader.account_id])
        row = await get(conn, row.id)
        await announce(conn, outbox, row, at, new_for_recipient=False, status_for_sender=True)
        await outbox.emit(conn, reader.account_id, "message.status",
                          view(row, reader, await photo_ids_of(conn, row.id)), at)
    row = await get(conn, row.id)
    return view(row, reader, await photo_ids_of(conn, row.id))


async def remove(conn: AsyncConnection, who: Principal, message_id: str) -> None:
    row = await get(conn, message_id)
    if who.account_id == row.sender_id:
        await conn.execute(messages.update().where(messages.c.id == row.id)
                           .values(sender_removed=True))
    elif who.account_id == row.recipient_id and row.status == "delivered":
        await conn.execute(messages.update().where(messages.c.id == row.id)
                           .values(recipient_removed=True))
    else:
        raise not_found("The message")


async def listing(conn: AsyncConnection, who: Principal, folder: str, before: str | None,
                  limit: int, with_id: str | None = None) -> list[dict[str, Any]]:
    """One folder, newest first; `with_id` keeps one conversation (the other party's id).

    `before` pages from a message of this very folder: any other id (someone else's message,
    one held from the caller, one the caller removed) is not found exactly like an id that
    never existed, so paging says nothing about messages the caller cannot see."""
    m = messages
    if folder == "inbox":
        mine = [m.c.recipient_id == who.account_id, m.c.status == "delivered",
                m.c.recipient_removed.is_(False)]
        other = m.c.sender_id
    else:
        mine = [m.c.sender_id == who.account_id, m.c.sender_removed.is_(False)]
        other = m.c.recipient_id
    query = select(m).where(*mine)
    if with_id:
        query = query.where(other == with_id)
    if before:
        anchor = (await conn.execute(select(m.c.id, m.c.created_at)
                                     .where(m.c.id == before, *mine))).first()
        if anchor is None:
            raise not_found("The message")
        query = query.where(or_(m.c.created_at < anchor.created_at,
                                and_(m.c.created_at == anchor.created_at, m.c.id < anchor.id)))
    rows = list(await conn.execute(query.order_by(m.c.created_at.desc(), m.c.id.desc())
                                   .limit(limit)))
    return views(rows, who, await photo_ids_by_message(conn, [r.id for r in rows]))
