"""Connections between a family member and an incarcerated person.

A family member requests; the person approves or denies. Only an approved, unblocked
connection lets the two message, gift or book visits. Either side may block (and unblock its
own block); staff of the person's facility may block any connection, lift the staff block,
and mark it privileged (attorney, clergy: never recorded). Each blocker (family, person,
staff) holds its own row in connection_blocks and only that blocker lifts it: a party can
never clear a staff block, nor the other party's. Every change is an event for both sides.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server.errors import forbidden, not_found
from server.events import Outbox
from server.schema import accounts, connection_blocks, connections
from store import Record
from store.ids import new_id

# What a family member may say they are to the person, shown with the request on the kiosk.
# Codes rather than free text: a free field would carry words to the person that no one paid
# for or reviewed; the apps turn each code into words.
RELATIONSHIPS = ("parent", "child", "partner", "sibling", "grandparent", "grandchild",
                 "other_family", "friend", "attorney", "clergy", "other")


def closed_because(status: str, blocked_by: str | None) -> str | None:
    """The one "approved, unblocked connection" rule, for a connection's `status` and
    `blocked_by` as read: None when its two parties may message, gift, book and meet;
    otherwise why not, as a refusal code: "blocked" while any block stands (a party's or
    staff's; only its owner lifts it, set_block), else "not_connected" unless approved. Every
    caller reads those two columns and asks here (tests/integration/test_contact_rule.py keeps it
    so)."""
    if blocked_by is not None:
        return "blocked"
    if status != "approved":
        return "not_connected"
    return None


async def is_approved_contact(conn: AsyncConnection, a: str, b: str) -> bool:
    return await approved_between(conn, a, b) is not None


async def approved_between(conn: AsyncConnection, a: str, b: str) -> Record:
    """The connection between a and b (either way round) if it is open, else None."""
    c = connections
    row = (await conn.execute(select(c).where(
        or_(and_(c.c.family_id == a, c.c.person_id == b),
            and_(c.c.family_id == b, c.c.person_id == a))))).first()
    return row if row is not None and closed_because(row.status, row.blocked_by) is None \
        else None


async def get(conn: AsyncConnection, connection_id: str) -> Record:
    row = (await conn.execute(select(connections)
                              .where(connections.c.id == connection_id))).first()
    if row is None:
        raise not_found("The connection")
    return row


def view(row: Record, names: dict[str, str] | None = None,
         sides: dict[str, list[str]] | None = None) -> dict[str, Any]:
    names = names or {}
    return {"id": row.id, "facility_id": row.facility_id, "family_id": row.family_id,
            "person_id": row.person_id, "status": row.status,
            "blocked": row.blocked_by is not None, "blocked_by": row.blocked_by,
            "blocked_sides": (sides or {}).get(row.id, []),
            "privileged": row.privileged, "updated_at": row.updated_at.isoformat(),
            "relationship": row.relationship,
            "requested_at": (row.requested_at or row.created_at).isoformat(),
            "family_name": names.get(row.family_id), "person_name": names.get(row.person_id)}


async def _names(conn: AsyncConnection, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    rows = await conn.execute(select(accounts.c.id, accounts.c.name)
                              .where(accounts.c.id.in_(ids)))
    return {r.id: r.name for r in rows}


async def _sides(conn: AsyncConnection, rows: list[Any]) -> dict[str, list[str]]:
    """Who holds a block on each blocked connection: "family", "person", "staff"."""
    ids = [r.id for r in rows if r.blocked_by is not None]
    if not ids:
        return {}
    found: dict[str, list[str]] = {}
    b = connection_blocks
    for r in await conn.execute(select(b.c.connection_id, b.c.side)
                                .where(b.c.connection_id.in_(ids)).order_by(b.c.side)):
        found.setdefault(r.connection_id, []).append(r.side)
    return found


async def _announce(conn: AsyncConnection, outbox: Outbox, row: Record, at: datetime) -> dict:
    shown = view(row, await _names(conn, {row.family_id, row.person_id}),
                 await _sides(conn, [row]))
    for party in sorted((row.family_id, row.person_id)):  # id order: see events.lock_streams
        await outbox.emit(conn, party, "connection.updated", shown, at)
    return shown


async def request(conn: AsyncConnection, outbox: Outbox, *, family_id: str, person_id: str,
                  at: datetime, relationship: str | None = None) -> dict:
    """Ask; asking again while a request is pending or approved changes nothing, and asking
    again after a denial is a new request (its relationship and time replace the old). Two
    requests at once (two taps, two tabs) make one connection and one announcement: the
    insert is guarded by the pair's unique key, the re-request by a conditional update."""
    person = (await conn.execute(select(accounts).where(
        accounts.c.id == person_id, accounts.c.role == "person",
        accounts.c.disabled.is_(False)))).first()
    if person is None:
        raise not_found("The person")
    existing = await _pair(conn, family_id, person_id)
    if existing is None:
        connection_id = new_id("con")
        try:
            async with conn.begin_nested():  # a duplicate leaves the transaction usable
                await conn.execute(connections.insert().values(
                    id=connection_id, facility_id=person.facility_id, family_id=family_id,
                    person_id=person_id, status="requested", privileged=False,
                    relationship=relationship, requested_at=at, created_at=at, updated_at=at))
        except IntegrityError:  # the same request, made at the same moment, came first
            return await _unchanged(conn, await _pair(conn, family_id, person_id))
        return await _announce(conn, outbox, await get(conn, connection_id), at)
    if existing.status == "denied" and existing.blocked_by is None:
        asked = await conn.execute(
            connections.update().where(connections.c.id == existing.id,
                                       connections.c.status == "denied")
            .values(status="requested", relationship=relationship, requested_at=at,
                    updated_at=at))
        if asked.rowcount == 1:
            return await _announce(conn, outbox, await get(conn, existing.id), at)
        existing = await get(conn, existing.id)
    return await _unchanged(conn, existing)


async def _pair(conn: AsyncConnection, family_id: str, person_id: str) -> Record:
    return (await conn.execute(select(connections).where(
        connections.c.family_id == family_id, connections.c.person_id == person_id))).first()


async def _unchanged(conn: AsyncConnection, row: Record) -> dict:
    """A request that changes nothing: the connection as it is, or why it cannot be asked."""
    if row.blocked_by is not None:
        raise Refused("blocked", "This connection is blocked.")
    return view(row, await _names(conn, {row.family_id, row.person_id}))


async def change(conn: AsyncConnection, outbox: Outbox, connection_id: str, *,
                 at: datetime, **values: Any) -> dict:
    await conn.execute(connections.update().where(connections.c.id == connection_id)
                       .values(updated_at=at, **values))
    return await _announce(conn, outbox, await get(conn, connection_id), at)


def side_of(row: Record, role: str, account_id: str) -> str:
    """The block slot `account_id` acting as `role` owns on this connection."""
    if role == "staff":
        return "staff"
    check_party(row, account_id)
    return "family" if account_id == row.family_id else "person"


async def set_block(conn: AsyncConnection, outbox: Outbox, row: Record, *, side: str,
                    actor_id: str, blocked: bool, at: datetime) -> tuple[dict, bool]:
    """Put or lift `side`'s own block; (the connection as shown, whether anything changed).

    The connection's row is written first: on PostgreSQL that takes its row lock, so two
    block changes of one connection run one after the other and the `blocked_by` summary is
    recomputed from every committed block (SQLite writers are serialised anyway). Lifting a
    block the caller does not hold, while another side's block stands, is refused 403."""
    c, b = connections, connection_blocks
    await conn.execute(c.update().where(c.c.id == row.id).values(updated_at=at))
    own = (b.c.connection_id == row.id) & (b.c.side == side)
    held = (await conn.execute(select(b.c.blocked_by).where(own))).first() is not None
    if blocked and not held:
        await conn.execute(b.insert().values(connection_id=row.id, side=side,
                                             blocked_by=actor_id, at=at))
    elif not blocked and held:
        await conn.execute(b.delete().where(own))
    elif not blocked and not held and (await conn.execute(
            select(b.c.side).where(b.c.connection_id == row.id))).first() is not None:
        raise Refused("forbidden", "Only whoever blocked it can lift that block.")
    # The summary the read paths test: staff's blocker first, then a party's, else NULL.
    first = (await conn.execute(select(b.c.blocked_by).where(b.c.connection_id == row.id)
                                .order_by((b.c.side == "staff").desc(), b.c.side)
                                .limit(1))).first()
    await conn.execute(c.update().where(c.c.id == row.id)
                       .values(blocked_by=None if first is None else first.blocked_by))
    return await _announce(conn, outbox, await get(conn, row.id), at), blocked != held


def check_party(row: Record, account_id: str) -> None:
    if account_id not in (row.family_id, row.person_id):
        raise not_found("The connection")


async def listing(conn: AsyncConnection, *, account_id: str | None = None,
                  facility_id: str | None = None, limit: int = 500) -> list[dict]:
    query = select(connections)
    if account_id is not None:
        query = query.where(or_(connections.c.family_id == account_id,
                                connections.c.person_id == account_id))
    elif facility_id is not None:
        query = query.where(connections.c.facility_id == facility_id)
    else:
        raise forbidden()
    rows = list(await conn.execute(query.order_by(connections.c.updated_at.desc()).limit(limit)))
    names = await _names(conn, {r.family_id for r in rows} | {r.person_id for r in rows})
    sides = await _sides(conn, rows)
    return [view(r, names, sides) for r in rows]
