"""Visit booking over HTTP: free slots, book, list, cancel (docs/visits.md, "Booking").

The rules themselves (the grid, the window, the room, the cut-off) are signalling/booking.py;
this module reads what they need from the store, holds the locks, writes the visit and its
events, and answers.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import AwareDatetime, Field
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger
from common.errors import Refused
from server import audit, idempotency
from server import facilities as facilities_service
from server.auth import ANY_SESSION, FAMILY, STAFF, Principal
from server.connections import closed_because
from server.errors import invalid, not_found
from server.events import Outbox
from server.facilities import Strict
from server.http.routing import Call, Route, json_response
from server.schema import accounts, connections, facilities, visits
from server.visits_view import announce
from signalling import booking
from signalling.booking import Rules
from signalling.visits import ACTIVE, get
from signalling.visits import public as public_view
from store import Record
from store.ids import new_id

BLOCKS_MAX = 96  # a whole day of 15-minute blocks; visiting hours usually allow far fewer

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BookingIn(Strict):
    connection_id: Annotated[str, Field(min_length=1, max_length=32)]
    start: AwareDatetime
    blocks: Annotated[int, Field(ge=1, le=BLOCKS_MAX)] = 1


def _rules(facility: Record) -> Rules:
    return Rules.of(facility.timezone, facility.settings)


async def _active(conn: AsyncConnection, start: datetime, end: datetime, *, facility_id: str,
                  family_id: str | None = None, person_id: str | None = None) -> list[Any]:
    """Active visits overlapping [start, end): at the facility, or of either party anywhere."""
    v = visits.c
    who = [v.facility_id == facility_id]
    who += [v.family_id == family_id] if family_id else []
    who += [v.person_id == person_id] if person_id else []
    return list(await conn.execute(select(visits).where(
        v.status.in_(ACTIVE), v.start_at < end, v.end_at > start, or_(*who))))


async def _facility(conn: AsyncConnection, facility_id: str, lock: bool = False) -> Record:
    query = select(facilities).where(facilities.c.id == facility_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise not_found("The facility")
    return row


async def _balance(conn: AsyncConnection, account_id: str) -> int:
    try:
        return await ledger.balance(conn, account_id)
    except ledger.LedgerError:
        return 0


# --- slots ---------------------------------------------------------------------------------


def _day(call: Call, rules: Rules) -> date:
    raw = call.request.query.get("date")
    if not raw:
        return rules.today(call.now())
    try:
        if not DAY.match(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise invalid("date is a day as YYYY-MM-DD") from None


async def list_slots(call: Call) -> web.Response:
    """Bookable blocks of a local date (?date=YYYY-MM-DD, today by default) and their free
    kiosks; past blocks left out except the one under way while a minute of it is left."""
    facility_id, me, now = call.match("facility_id"), call.me, call.now()
    if me.role != "family":
        call.require_facility(facility_id)
    async with call.ctx.store.read() as conn:
        facility = await _facility(conn, facility_id)
        rules = _rules(facility)
        day = _day(call, rules)
        if day > rules.last_day(now):
            raise Refused("beyond_horizon", f"Visits can be booked at most "
                                            f"{rules.horizon_days} days ahead.")
        blocks = booking.open_blocks(rules, day, now)
        active = await _active(conn, blocks[0].start, blocks[-1].end,
                               facility_id=facility_id) if blocks else []
        price = facility.settings["prices"]["visit_minute"]
        covered = booking.minutes_covered(await _balance(conn, me.account_id), price) \
            if me.role == "family" else None
    return json_response({
        "date": day.isoformat(), "timezone": facility.timezone,
        "block_minutes": rules.block_minutes, "minute_price": price,
        "minutes_covered": covered,
        "slots": [_slot(b, rules, now, covered, booking.free(b, rules.kiosks, active))
                  for b in blocks]})


def _slot(b: booking.Block, rules: Rules, now: datetime, covered: int | None,
          free: int) -> dict[str, Any]:
    """A block as the grid shows it. `minutes_left`: what a booking of it can still be (a
    block under way offers only the minutes left of it, not the whole block);
    `minutes_covered`: how many of those the caller's balance pays for (None: not a family, or
    free visits)."""
    left = booking.minutes_left(b, now)
    return {"start": b.start.isoformat(), "end": b.end.isoformat(),
            "local_start": b.start.astimezone(rules.zone).isoformat(),
            "local_end": b.end.astimezone(rules.zone).isoformat(),
            "free": free, "minutes_left": left,
            "minutes_covered": None if covered is None else min(covered, left)}


# --- booking -------------------------------------------------------------------------------


async def _connection(conn: AsyncConnection, connection_id: str, family_id: str) -> Record:
    c = connections.c
    row = (await conn.execute(select(connections).where(
        c.id == connection_id, c.family_id == family_id))).first()
    if row is None or closed_because(row.status, row.blocked_by) is not None:
        raise Refused("not_connected", "You can book visits only with an approved contact.")
    return row


async def book_visit(conn: AsyncConnection, outbox: Outbox, *, family_id: str, body: BookingIn,
                     now: datetime) -> dict[str, Any]:
    """Check and store a booking in the caller's write transaction; the visit's view."""
    link = await _connection(conn, body.connection_id, family_id)
    # Bookings at one facility queue on its row, and a family's bookings on the family's
    # row, so two bookings for the last kiosk (or of one family at two facilities) cannot
    # both see it free. SQLite's write transaction is exclusive already (FOR UPDATE is not
    # rendered there).
    facility = await _facility(conn, link.facility_id, lock=True)
    await conn.execute(select(accounts.c.id).where(accounts.c.id == family_id)
                       .with_for_update())
    rules = _rules(facility)
    covered = booking.window(rules, body.start, body.blocks, now)
    start, end = covered[0].start, covered[-1].end
    active = await _active(conn, start, end, facility_id=facility.id, family_id=family_id,
                           person_id=link.person_id)
    booking.check_room(covered, facility_id=facility.id, family_id=family_id,
                       person_id=link.person_id, kiosks=rules.kiosks, active=active)
    settings = facility.settings
    price = settings["prices"]["visit_minute"]
    if await _balance(conn, family_id) < price:
        raise Refused("insufficient_credits",
                       f"Booking needs a balance of at least one minute ({price} credits).")
    visit_id = new_id("vis")
    await conn.execute(visits.insert().values(
        id=visit_id, facility_id=facility.id, connection_id=link.id, family_id=family_id,
        person_id=link.person_id, booked_by=family_id, start_at=start, end_at=end,
        blocks=body.blocks, minute_price=price, media=settings["media"],
        record=bool(settings["record_visits"]) and not link.privileged, status="scheduled",
        end_reason=None, created_at=now, updated_at=now, meter=None))
    return await announce(conn, outbox, visit_id, now)


async def book(call: Call) -> web.Response:
    """Book a visit for an approved connection: one or more blocks on the facility's grid.
    With an Idempotency-Key (the family app sends one per confirmation), a repeat of the
    request (a double tap, a retry after a lost answer) returns the first booking."""
    outbox = Outbox()
    me, now, body = call.me, call.now(), call.body
    key = call.request.headers.get("Idempotency-Key")
    async with call.ctx.store.write() as conn:
        if key is not None:
            key = call.idempotency_key()  # checked: 1 to 128 printable characters
            replay = await idempotency.claim(
                conn, account_id=me.account_id, key=key, now=now,
                fingerprint=idempotency.request_hash("POST", call.request.path,
                                                     body.model_dump(mode="json")))
            if replay is not None:
                return json_response(replay[1], replay[0])
        shown = await book_visit(conn, outbox, family_id=me.account_id, body=body, now=now)
        result = {"visit": shown}
        if key is not None:
            await idempotency.store(conn, account_id=me.account_id, key=key, status=201,
                                    body=result)
    await outbox.signal(call.ctx.broker)
    return json_response(result, 201)


# --- listing and cancelling ----------------------------------------------------------------


def _instant(call: Call, name: str) -> datetime | None:
    raw = call.request.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
        if value.tzinfo is None:
            raise ValueError(raw)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid(f"{name} is an ISO 8601 time with its offset, "
                      "e.g. 2026-03-02T15:00:00Z") from None


async def list_visits(call: Call) -> web.Response:
    """Your visits (staff: the facility's; admins: all or ?facility_id=), by start time;
    ?from= and ?to= keep those whose window overlaps [from, to)."""
    me, v = call.me, visits.c
    query = select(visits, facilities.c.timezone).join(facilities,
                                                       facilities.c.id == v.facility_id)
    if me.role == "family":
        query = query.where(v.family_id == me.account_id)
    elif me.role == "person":
        query = query.where(v.person_id == me.account_id)
    elif me.role == "staff":
        query = query.where(v.facility_id == me.facility_id)
    elif facility_id := call.request.query.get("facility_id"):
        query = query.where(v.facility_id == facility_id)
    start, end = _instant(call, "from"), _instant(call, "to")
    if start is not None:
        query = query.where(v.end_at > start)
    if end is not None:
        query = query.where(v.start_at < end)
    limit = call.query_int("limit", lo=1, hi=call.ctx.settings.page_size_max) or 100
    async with call.ctx.store.read() as conn:
        rows = await conn.execute(query.order_by(v.start_at, v.id).limit(limit))
        shown = [public_view(r) for r in rows]
    return json_response({"visits": shown})


async def cancel_visit(conn: AsyncConnection, outbox: Outbox, me: Principal, visit_id: str,
                       now: datetime) -> dict[str, Any]:
    """Cancel in the caller's write transaction; the visit's view. Staff cancellations (any
    time while scheduled) are audited; a family's must come before the cut-off."""
    row = await get(conn, visit_id)
    if me.role == "family" and row.family_id != me.account_id:
        raise not_found("The visit")
    if me.role == "staff" and row.facility_id != me.facility_id:
        raise not_found("The visit")
    if row.status != "scheduled":
        raise Refused("not_scheduled", f"The visit is {row.status}; only a scheduled "
                                             "visit can be cancelled.")
    by_family = me.role == "family"
    if by_family:
        facility = await facilities_service.get(conn, row.facility_id)
        booking.check_cancel(Rules.of(row.timezone, facility.settings), row.start_at, now)
    reason = "cancelled_by_family" if by_family else "cancelled_by_staff"
    # Conditional, so a cancellation racing the visit's opening cannot undo it.
    done = await conn.execute(visits.update().where(
        visits.c.id == row.id, visits.c.status == "scheduled").values(
        status="cancelled", end_reason=reason, updated_at=now))
    if done.rowcount != 1:
        raise Refused("not_scheduled", "The visit is no longer scheduled.")
    if not by_family:
        await audit.record(conn, actor_id=me.account_id, actor_role=me.role,
                           action="visit.cancel", facility_id=row.facility_id, target=row.id,
                           at=now, details={"start": row.start_at.isoformat()})
    return await announce(conn, outbox, row.id, now)


async def cancel(call: Call) -> web.Response:
    """Cancel a scheduled visit: the family before the cut-off, staff of the facility any time."""
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        shown = await cancel_visit(conn, outbox, call.me, call.match("visit_id"), call.now())
    await outbox.signal(call.ctx.broker)
    return json_response({"visit": shown})


ROUTES = [
    Route("GET", "/facilities/{facility_id}/slots", list_slots, FAMILY | STAFF,
          query={"date": "a local date, YYYY-MM-DD (today by default)"}),
    Route("POST", "/visits", book, FAMILY, body=BookingIn, idempotent="optional"),
    Route("GET", "/visits", list_visits, ANY_SESSION,
          query={"from": "ISO 8601 time: visits ending after it",
                 "to": "ISO 8601 time: visits starting before it",
                 "facility_id": "admins: one facility", "limit": "page size"}),
    Route("POST", "/visits/{visit_id}/cancel", cancel, FAMILY | STAFF),
]
