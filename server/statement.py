"""A person's statement as they read it: a read model over their ledger transfers.

The ledger stays what it is (one immutable transfer per minute, per message part, per refund);
this groups the transfers a person thinks of as one thing into one line:

- a video visit: every minute debit of the visit -> "Video visit with Dana Rivers", minutes,
  credits;
- a message: its message and photo charges -> "Message to Dana Rivers (1 photo)";
- a refund: every refund of one rejected message -> one line tied to that message;
- a purchase: the credits, with the dollars paid (price, fee, total) and the card's last 4.

A line's place is its newest transfer (paging by that seq), so a line is never split across
pages and appears once. Names are looked up at read time; nothing here writes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, literal, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.tables import ledger_transfers, purchases
from server.schema import accounts, messages, visits

GROUPS = {"visit_minute": "visit", "message": "message", "photo": "message", "refund": "refund"}


@dataclass(frozen=True)
class Range:
    """Lines whose newest transfer is at or after `since` and before `until`, and (paging)
    whose newest transfer's seq is below `before`; None means unbounded."""
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None


async def lines(conn: AsyncConnection, account: str, where: Range,
                limit: int) -> list[dict[str, Any]]:
    """The account's statement lines, newest first, at most `limit`."""
    t = ledger_transfers.c
    group = case(*((t.kind == k, literal(v)) for k, v in GROUPS.items()), else_=t.kind)
    # Transfers without a ref (gifts) are each their own line.
    key = func.coalesce(t.ref, t.id)
    signed = case((t.credit_account == account, t.amount), else_=-t.amount)
    other = case((t.credit_account == account, t.debit_account), else_=t.credit_account)
    newest = func.max(t.seq)
    query = (select(group.label("grp"), key.label("key"), newest.label("seq"),
                    func.sum(signed).label("credits"), func.count().label("transfers"),
                    func.max(t.at).label("at"), func.min(t.at).label("first_at"),
                    func.max(other).label("counterparty"), func.max(t.ref).label("ref"))
             .where((t.debit_account == account) | (t.credit_account == account))
             # By the output labels: PostgreSQL would see the CASE repeated with fresh bind
             # parameters as another expression.
             .group_by(literal_column("grp"), literal_column("key")))
    if where.before is not None:
        query = query.having(newest < where.before)
    if where.since is not None:
        query = query.having(func.max(t.at) >= where.since)
    if where.until is not None:
        query = query.having(func.max(t.at) < where.until)
    rows = list(await conn.execute(query.order_by(newest.desc()).limit(limit)))
    return await _described(conn, account, rows)


async def _by_id(conn: AsyncConnection, table: Any, ids: set[str]) -> dict[str, Any]:
    if not ids:
        return {}
    return {r.id: r for r in await conn.execute(select(table).where(table.c.id.in_(ids)))}


async def _described(conn: AsyncConnection, account: str, rows: list[Any]) -> list[dict[str, Any]]:
    refs = {kind: {r.ref for r in rows if r.grp == kind and r.ref}
            for kind in ("visit", "message", "refund", "purchase")}
    seen_visits = await _by_id(conn, visits, refs["visit"])
    seen_messages = await _by_id(conn, messages, refs["message"] | refs["refund"])
    bought = await _by_id(conn, purchases, refs["purchase"])
    people: set[str] = {r.counterparty for r in rows if r.grp == "gift"}
    for v in seen_visits.values():
        people |= {v.family_id, v.person_id}
    for m in seen_messages.values():
        people |= {m.sender_id, m.recipient_id}
    names = {}
    if people:
        names = {a.id: a.name for a in await conn.execute(
            select(accounts.c.id, accounts.c.name).where(accounts.c.id.in_(people)))}
    out = []
    for r in rows:
        line: dict[str, Any] = {"seq": r.seq, "at": _iso(r.at), "kind": r.grp,
                                "credits": int(r.credits), "ref": r.ref}
        if r.grp == "visit" and r.ref in seen_visits:
            v = seen_visits[r.ref]
            other = v.person_id if v.family_id == account else v.family_id
            line |= {"with": names.get(other), "minutes": int(r.transfers),
                     "started_at": _iso(r.first_at), "facility_id": v.facility_id}
        elif r.grp in ("message", "refund") and r.ref in seen_messages:
            m = seen_messages[r.ref]
            sent = m.sender_id == account
            line |= {"with": names.get(m.recipient_id if sent else m.sender_id),
                     "direction": "to" if sent else "from", "photos": m.photo_count,
                     "message_at": _iso(m.created_at)}
            if r.grp == "refund":
                line["refunds"] = {"kind": "message", "id": m.id,
                                   "reason": m.reject_reason}
        elif r.grp == "purchase" and r.ref in bought:
            p = bought[r.ref]
            line |= {"price_cents": p.price_cents, "fee_cents": p.fee_cents,
                     "total_cents": p.total_cents, "card_brand": p.card_brand,
                     "card_last4": p.card_last4}
        elif r.grp == "gift":
            line |= {"with": names.get(r.counterparty), "direction":
                     "from" if r.credits > 0 else "to"}
        out.append(line)
    return out


def _iso(value: Any) -> str:
    # SQLite hands an aggregate of a timestamp back as text; PostgreSQL as a datetime.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo("UTC"))
    return value.isoformat()


def describe(line: dict[str, Any]) -> str:
    """What a line says (the family app says the same; docs/clients.md)."""
    who = line.get("with") or "a contact"
    kind = line["kind"]
    if kind == "visit":
        minutes = line.get("minutes", 0)
        return f"Video visit with {who}, {minutes} minute{'s' if minutes != 1 else ''}"
    if kind == "message":
        photos = line.get("photos") or 0
        extra = f" ({photos} photo{'s' if photos != 1 else ''})" if photos else ""
        return f"Message {line.get('direction', 'to')} {who}{extra}"
    if kind == "refund":
        return f"Refund: message {line.get('direction', 'to')} {who} rejected by review"
    if kind == "purchase" and "total_cents" in line:
        return (f"Bought credits: {_dollars(line['price_cents'])} + "
                f"{_dollars(line['fee_cents'])} fee = {_dollars(line['total_cents'])}, "
                f"{line['card_brand']} ending {line['card_last4']}")
    if kind == "gift":
        return f"Gift {line.get('direction', 'to')} {who}"
    return kind.replace("_", " ").capitalize()


def _dollars(cents: int) -> str:
    return f"${cents / 100:.2f}"


CSV_COLUMNS = ("time", "what", "credits", "minutes", "paid (USD)", "fee (USD)")


def to_csv(rows: list[dict[str, Any]], zone: ZoneInfo) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        at = datetime.fromisoformat(r["at"]).astimezone(zone).isoformat(timespec="seconds")
        paid = f"{r['total_cents'] / 100:.2f}" if "total_cents" in r else ""
        fee = f"{r['fee_cents'] / 100:.2f}" if "fee_cents" in r else ""
        # describe() starts every line with fixed words, so no cell starts as a formula.
        writer.writerow([at, describe(r), r["credits"], r.get("minutes", ""), paid, fee])
    return out.getvalue()
