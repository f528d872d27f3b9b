"""The visit state machine: scheduled -> open -> live <-> paused -> ended (or cancelled, missed).

What is known of the call is stored on the visit row, so any process may record it: each
party's media state ("absent", "joined", "connected") and the process (node id) holding its
socket, whether the kiosk's outbound media is advancing, and in relay mode what the server
itself sees. The row's status follows from them by the meter's trust model
(billing.meter.is_connected): live exactly while the call is connected by that rule, paused
while it was live and is not, open once anyone joined. `media_changed_at` marks the moment
"connected" last changed: the meter bills from these instants, whichever process it runs on.
A party whose holder process died stays on the row until a meter finds that process's
liveness lease gone and drops it (`drop` with the dead node). Every status change is a
`visit.updated` event for both parties, written in the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, column, select, table
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import meter
from common.errors import Refused
from signalling.tables import visits
from store import Record, Statement

ACTIVE = ("scheduled", "open", "live", "paused")
IN_CALL = ("open", "live", "paused")
SDP_CHARS_MAX = 32_000
CANDIDATE_CHARS_MAX = 1_024
LINK_QUALITIES = ("good", "fair", "poor")
LINK_REASON_CHARS_MAX = 80


class EventSink(Protocol):
    """Somewhere to write a user's event inside the current transaction (server's Outbox)."""

    async def emit(self, conn: AsyncConnection, account_id: str, kind: str,
                   data: dict[str, Any], at: datetime) -> int: ...

    async def emit_many(self, conn: AsyncConnection, items: list[tuple[str, str, dict[str, Any]]],
                        at: datetime) -> None: ...


class VisitError(Refused):
    """A visit operation was refused: the visit is not there, not in a call, not yours, or a
    signal is malformed."""


@dataclass(frozen=True)
class Joined:
    visit: Record
    role: str
    peer_id: str
    peer_present: bool


# The facility's time zone, by name only: signalling does not import server's tables.
_facilities = table("facilities", column("id"), column("timezone"))


def public(row: Record) -> dict[str, Any]:
    """A visit as clients see it: UTC times, and the same in the facility's time zone."""
    zone = ZoneInfo(row.timezone)
    return {"id": row.id, "facility_id": row.facility_id, "connection_id": row.connection_id,
            "family_id": row.family_id, "person_id": row.person_id,
            "start": row.start_at.isoformat(), "end": row.end_at.isoformat(),
            "timezone": row.timezone, "local_start": row.start_at.astimezone(zone).isoformat(),
            "local_end": row.end_at.astimezone(zone).isoformat(), "blocks": row.blocks,
            "status": row.status, "end_reason": row.end_reason,
            "minute_price": row.minute_price, "media": row.media, "record": row.record,
            "family_media": row.family_media, "person_media": row.person_media,
            "pause_reason": pause_reason(row), "link_quality": row.link_quality,
            "link_reason": row.link_reason}


def facts(row: Record, alive: set[str] | None = None) -> meter.Facts:
    """The row's facts for the meter. `alive`: the nodes whose liveness lease is current; a
    party held by any other node is absent (its process died). A row that names no node was
    written without one (by hand, or by a bench's loader): it is taken as it reads."""
    def gone(node: str | None) -> bool:
        return alive is not None and node is not None and node not in alive

    def party(state: str, node: str | None) -> str:
        return "absent" if gone(node) else state
    server = bool(row.server_media) and not gone(row.server_node)
    return meter.Facts(party(row.family_media, row.family_node),
                       party(row.person_media, row.person_node),
                       bool(row.person_sending), server)


def meter_view(row: Record) -> dict[str, Any]:
    """What a party's screen shows of the meter, from the state stored on the row: the paid
    minutes, and the family's balance after the last debit (None before the first)."""
    state = getattr(row, "meter", None) or {}
    return {"paid_minutes": state.get("paid_minutes", 0), "balance": state.get("balance")}


def pause_reason(row: Record) -> str | None:
    """Why a visit in a call is not live, for both screens (docs/visits.md, "Trust"):
    family_away, person_away, not_connected (the kiosk, or in relay mode the server, sees no
    media from the family), person_not_sending (the facility's camera or microphone stalled)."""
    if row.status not in ("open", "paused"):
        return None
    known = facts(row)
    if known.family == "absent":
        return "family_away"
    if known.person == "absent":
        return "person_away"
    if row.media != "relay" and known.person == "connected" and not known.sending:
        return "person_not_sending"
    return "not_connected"


# get()'s statement, compiled once (store/statement.py): every join, media report, drop and
# signal check reads the row, and 200 joins at once queue on one core. ROW is the Core select a
# caller may extend with more columns (server/calls.py visit_and_link) and pass to get().
ROW = (select(visits, _facilities.c.timezone)
       .join(_facilities, _facilities.c.id == visits.c.facility_id)
       .where(visits.c.id == bindparam("p_id")))
_GET = Statement(ROW)


async def get(conn: AsyncConnection, visit_id: str, query: Statement = _GET) -> Record:
    """The visit's row (a named tuple), with its facility's `timezone` alongside (and whatever
    else `query`, ROW extended, reads)."""
    found = await query.first(conn, {"p_id": visit_id})
    if found is None:
        raise VisitError("not_found", "The visit was not found.")
    return found


def role_of(row: Record, account_id: str) -> str:
    if account_id == row.family_id:
        return "family"
    if account_id == row.person_id:
        return "person"
    # A stranger learns nothing, not even that the visit exists.
    raise VisitError("not_found", "The visit was not found.")


def peer_of(row: Record, account_id: str) -> str:
    return row.person_id if role_of(row, account_id) == "family" else row.family_id


async def announce(conn: AsyncConnection, sink: EventSink, row: Record, at: datetime) -> None:
    # In id order, as server.events.lock_streams takes them, so no two transactions wait on
    # each other's stream heads. One emit_many: both heads bumped in that order and one
    # two-row insert (a statement less than an emit each), the view built once.
    shown = public(row)
    await sink.emit_many(conn, [(party, "visit.updated", shown)
                                for party in sorted((row.family_id, row.person_id))], at)


def _status(current: str, media: str, known: meter.Facts) -> str:
    if meter.is_connected(media, known):
        return "live"
    if current in ("live", "paused"):
        return "paused"
    return "open"


# What the call's facts are on the row; an update is conditional on all of them as read.
_FACT_COLUMNS = ("status", "family_media", "person_media", "family_node", "person_node",
                 "person_sending", "server_media", "server_node")
_UPDATES: dict[tuple[str, ...], Statement] = {}


def _update(columns: tuple[str, ...]) -> Statement:
    """The conditional UPDATE setting `columns`, compiled once per set of columns: every join,
    media report and drop runs one, and building and compiling it through Core cost more CPU
    than the database did."""
    query = _UPDATES.get(columns)
    if query is None:
        checks = [visits.c[name].is_not_distinct_from(bindparam(f"was_{name}"))
                  for name in _FACT_COLUMNS]  # the nodes may be NULL
        query = _UPDATES[columns] = Statement(visits.update().where(
            visits.c.id == bindparam("p_id"), *checks).values(
            **{name: bindparam(f"new_{name}") for name in columns}))
    return query


async def _change(conn: AsyncConnection, sink: EventSink, row: Record, changes: dict[str, Any],
                  now: datetime, stopped_at: datetime | None = None) -> Record:
    """Record `changes` (fact columns) on the visit; the status follows from the facts.
    `stopped_at`: if this ends the call's being live, the media stopped then, not now; it is
    kept no earlier than the moment the visit went live."""
    merged = {**_fields(row), **changes}
    status = _status(row.status, row.media, facts(SimpleNamespace(**merged)))
    values: dict[str, Any] = {**changes, "status": status, "updated_at": now}
    if (status == "live") != (row.status == "live"):
        values["media_changed_at"] = now
        if status != "live" and stopped_at is not None and stopped_at < now:
            went_live = row.media_changed_at
            values["media_changed_at"] = max(stopped_at, went_live) if went_live else stopped_at
        if status != "live" and row.first_stop_at is None:
            values["first_stop_at"] = values["media_changed_at"]  # until the meter reads it
    columns = tuple(sorted(values))
    update = _update(columns)
    params = {"p_id": row.id, **{f"was_{name}": getattr(row, name) for name in _FACT_COLUMNS},
              **{f"new_{name}": values[name] for name in columns}}
    # Conditional on the facts read, so two processes recording at once cannot interleave.
    changed = await update.run(conn, params)
    if changed != 1:
        raise _Moved(row.id)
    # The update was conditional on the row as read: the row now is that row with `values`
    # (no second SELECT; a join costs a write transaction, and 200 of them at once queue).
    fresh = SimpleNamespace(**{**_fields(row), **values})
    if fresh.status != row.status:
        await announce(conn, sink, fresh, now)
    return fresh


class _Moved(Exception):
    """Another transaction changed the visit's facts between this one's read and its update."""


MOVED_RETRIES_MAX = 50  # each retry means another transaction committed a change to the row


async def _decided(conn: AsyncConnection, visit_id: str, row: Record,
                   decide: Callable[[Record], Awaitable[Record]]) -> Record:
    """`decide(row)` on the row as read (`row`, or read here if None), and again on a fresh
    read whenever the row moved before its conditional update: the checks are made again on
    what is there now, not only the change applied again. (Re-applying the change alone let a
    drop by a process that had lost the party, its read taken before the party rejoined
    elsewhere, mark the rejoined party absent: seen once on PostgreSQL, in
    test_meter_remote_crash.)"""
    for _ in range(MOVED_RETRIES_MAX):
        if row is None:
            row = await get(conn, visit_id)
        try:
            return await decide(row)
        except _Moved:
            row = None
    raise RuntimeError(f"visit {visit_id}: its row kept changing under {MOVED_RETRIES_MAX} "
                       "attempts to record a change")


def _fields(row: Record) -> dict[str, Any]:
    """A row from get() (a named tuple) or from _change (a namespace) as a dict."""
    return row._asdict() if hasattr(row, "_asdict") else vars(row)


def _check_window(row: Record, now: datetime) -> None:
    if row.status not in IN_CALL and row.status != "scheduled":
        raise VisitError("visit_over", f"The visit is {row.status}.")
    if now < row.start_at:
        raise VisitError("too_early", "The visit has not started yet.")
    if now >= row.end_at:
        raise VisitError("visit_over", "The visit window has ended.")


async def join(conn: AsyncConnection, sink: EventSink, visit_id: str, account_id: str,
               now: datetime, row: Record = None, node: str | None = None) -> Joined:
    """`row`: the visit's row as `get` read it in this transaction, if the caller has it.
    `node`: the process holding the party's socket (its liveness lease names it)."""

    async def decide(row: Record) -> Record:
        role = role_of(row, account_id)
        _check_window(row, now)
        changes: dict[str, Any] = {f"{role}_media": "joined", f"{role}_node": node}
        if role == "person":
            changes["person_sending"] = True  # a fresh start: no stall until it says so
            changes["link_quality"] = changes["link_reason"] = None  # nor a link measured yet
        if any(getattr(row, name) != value for name, value in changes.items()):
            # A party joining has no media yet, even if the row says "connected": its last
            # process may have died without recording that it left.
            row = await _change(conn, sink, row, changes, now)
        return row

    row = await _decided(conn, visit_id, row, decide)
    role = role_of(row, account_id)
    peer_state = row.person_media if role == "family" else row.family_media
    return Joined(row, role, peer_of(row, account_id), peer_state != "absent")


async def set_media(conn: AsyncConnection, sink: EventSink, visit_id: str, account_id: str,
                    connected: bool, now: datetime, node: str | None = None,
                    sending: bool | None = None, stopped_at: datetime | None = None,
                    link: tuple[str, str | None] | None = None) -> Record:
    """A party's report of its own peer connection. Only the person's (the kiosk's) counts
    for billing in direct mode; `sending` (its outbound media advancing) is taken from the
    person alone. In relay mode neither counts: the server observes (`observe`).
    `stopped_at`: the kiosk's last frame from the family, when a stall ends the call's being
    live (the caller bounds it by the stall threshold): the meter takes back the time since
    (media_changed_at records it; signalling/meters.py passes it as the stop's instant).
    `link`: the link's quality (LINK_QUALITIES) and why, kept from the person alone, as
    `sending` is: the kiosk is the facility's device, and staff read it."""

    async def decide(row: Record) -> Record:
        role = role_of(row, account_id)
        if row.status not in IN_CALL:
            raise VisitError("not_in_call", f"The visit is {row.status}.")
        if (row.family_media if role == "family" else row.person_media) == "absent":
            raise VisitError("not_joined", "Join the visit first.")
        changes: dict[str, Any] = {f"{role}_media": "connected" if connected else "joined"}
        if node is not None:
            changes[f"{role}_node"] = node
        if role == "person" and sending is not None:
            changes["person_sending"] = sending
        if role == "person" and link is not None:
            changes["link_quality"], changes["link_reason"] = link
        if all(getattr(row, name) == value for name, value in changes.items()):
            return row
        return await _change(conn, sink, row, changes, now,
                             stopped_at if role == "person" else None)

    return await _decided(conn, visit_id, None, decide)


async def drop(conn: AsyncConnection, sink: EventSink, visit_id: str, account_id: str,
               now: datetime, node: str | None = None) -> Record:
    """A party's socket went away without hanging up, or its process died: absent, and the
    meter pauses. With `node`, only if that process still holds the party: one that has
    rejoined elsewhere meanwhile stays."""

    async def decide(row: Record) -> Record:
        role = role_of(row, account_id)
        if row.status not in IN_CALL or (node is not None
                                         and getattr(row, f"{role}_node") != node):
            return row
        if getattr(row, f"{role}_media") == "absent":
            return row
        return await _change(conn, sink, row,
                             {f"{role}_media": "absent", f"{role}_node": None}, now)

    return await _decided(conn, visit_id, None, decide)


async def observe(conn: AsyncConnection, sink: EventSink, visit_id: str, connected: bool,
                  now: datetime, node: str, stopped_at: datetime | None = None) -> Record:
    """Relay mode: what the server holding the visit's media sees (media arriving from both
    parties, the person's advancing). The only presence report that counts in relay mode.
    `stopped_at`: when the media it no longer sees last arrived (as in set_media)."""

    async def decide(row: Record) -> Record:
        if row.status not in IN_CALL:
            return row
        if (bool(row.server_media), row.server_node) == (connected, node):
            return row
        if not connected and row.server_node not in (None, node):
            # A relay that no longer holds the visit (it moved on a drain or failover)
            # reporting the media it cut: the new relay's own view stands.
            return row
        return await _change(conn, sink, row, {"server_media": connected, "server_node": node},
                             now, stopped_at)

    return await _decided(conn, visit_id, None, decide)


async def end(conn: AsyncConnection, sink: EventSink, visit_id: str, reason: str,
              now: datetime) -> Record | None:
    """End a visit in a call (or one whose window passed); None if it had already ended."""
    if reason not in meter.END_REASONS:
        raise ValueError(reason)
    ended = await conn.execute(visits.update().where(
        visits.c.id == visit_id, visits.c.status.in_(IN_CALL))
        .values(status="ended", end_reason=reason, ended_at=now, updated_at=now,
                family_media="absent", person_media="absent", family_node=None,
                person_node=None, server_media=False, server_node=None))
    if ended.rowcount != 1:
        return None
    row = await get(conn, visit_id)
    await announce(conn, sink, row, now)
    return row


def checked_signal(args: dict[str, Any]) -> dict[str, Any]:
    """An offer/answer or an ICE candidate, checked for shape and size before it is relayed."""
    description, candidate = args.get("description"), args.get("candidate")
    if (description is None) == (candidate is None):
        raise VisitError("invalid_signal", "Send either a description or a candidate.")
    if description is not None:
        if not isinstance(description, dict) or description.get("type") not in (
                "offer", "answer"):
            raise VisitError("invalid_signal", "description.type is offer or answer.")
        sdp = description.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > SDP_CHARS_MAX:
            raise VisitError("invalid_sdp",
                             f"description.sdp must be SDP (v=0...) of at most {SDP_CHARS_MAX}.")
        return {"description": {"type": description["type"], "sdp": sdp}}
    if not isinstance(candidate, dict):
        raise VisitError("invalid_signal", "candidate must be an object.")
    text = candidate.get("candidate")
    mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    if not isinstance(text, str) or len(text) > CANDIDATE_CHARS_MAX:
        raise VisitError("invalid_candidate",
                         f"candidate.candidate must be text of at most {CANDIDATE_CHARS_MAX}.")
    if text and not text.startswith(("candidate:", "a=candidate:")):
        raise VisitError("invalid_candidate", "candidate.candidate is not an ICE candidate.")
    if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
        raise VisitError("invalid_candidate", "candidate.sdpMid is a short string.")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)
                              or not 0 <= index < 64):
        raise VisitError("invalid_candidate", "candidate.sdpMLineIndex is 0..63.")
    return {"candidate": {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index}}
