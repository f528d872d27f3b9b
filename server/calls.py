"""The glue between the visit state machine (signalling/) and this process's sockets and
broker: live pushes to a party on whatever process it is connected to."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server import connections, events
from server.broker import Broker, BrokerUnavailable
from server.errors import not_found
from server.schema import connections as connections_table
from server.schema import visits
from signalling.visits import ROW as VISIT_ROW
from signalling.visits import get as get_visit
from store import Record, Statement

if TYPE_CHECKING:
    from signalling.meters import Meters

log = logging.getLogger("kinwire.calls")


async def require_contact(conn: AsyncConnection, row: Record) -> None:
    """A visit was booked on an approved contact; a block since (by either side or by staff),
    or a connection no longer approved, stops the visit as it stops messages."""
    link = await connections.get(conn, row.connection_id)
    _check_link(link.status, link.blocked_by)


_WHY_CLOSED = {"blocked": "This connection is blocked.",
               "not_connected": "Only an approved contact."}


def _check_link(status: str, blocked_by: str | None) -> None:
    why = connections.closed_because(status, blocked_by)
    if why is not None:
        raise Refused(why, _WHY_CLOSED[why])


# A join's one read: the visit row as signalling.visits.get reads it, with its connection's
# block and status alongside, compiled once (store/statement.py). 200 joins at once queue on
# one core, and reading the connection apart cost a round trip and a Core statement each. An
# outer join, so a missing connection still answers as connections.get does.
_c = connections_table
_VISIT_AND_LINK = Statement(
    VISIT_ROW.add_columns(_c.c.id.label("link_id"), _c.c.blocked_by.label("link_blocked_by"),
                          _c.c.status.label("link_status"))
    .outerjoin(_c, _c.c.id == visits.c.connection_id))


async def visit_and_link(conn: AsyncConnection, visit_id: str) -> Record:
    """The visit's row as signalling.visits.get returns it (VisitError 404 if none), with
    `link_id`, `link_blocked_by` and `link_status` (its connection's) alongside; check those
    with `require_contact_of` once the caller is known to be a party."""
    return await get_visit(conn, visit_id, _VISIT_AND_LINK)


def require_contact_of(row: Record) -> None:
    """require_contact on a row from visit_and_link, without another read."""
    if row.link_id is None:
        raise not_found("The connection")
    _check_link(row.link_status, row.link_blocked_by)


async def push_live(broker: Broker, account_id: str, kind: str, data: dict[str, Any]) -> bool:
    """A live-only push (no seq): lost if the broker is down, which the clients tolerate
    (signalling is retried by ICE restarts, ends are also stored as visit.updated events)."""
    try:
        await broker.publish(events.channel(account_id), {"live": {"type": kind, "data": data}})
    except BrokerUnavailable:
        log.warning("broker unavailable: live %s push dropped", kind)
        return False
    return True


async def close_revoked(broker: Broker, account_id: str, session_ids: list[str]) -> None:
    """The open sockets of sessions just revoked close now (logout, a password reset). With the
    broker down they stay open until their next check of the session (logged)."""
    try:
        for session_id in session_ids:
            await broker.publish(events.channel(account_id), {"revoked": session_id})
    except BrokerUnavailable:
        log.warning("broker unavailable: sockets of a revoked session stay open for now")


async def announce_end(broker: Broker, row: Record, meters: Meters | None = None) -> None:
    """Both parties hear `visit.ended`; with `meters`, every process's gateway drops its cached
    "in a call" for the visit at once (server/gateway/ops.py visit_signal)."""
    if meters is not None:
        await meters.announce_end(row.id)
    for party in (row.family_id, row.person_id):
        await push_live(broker, party, "visit.ended",
                        {"visit_id": row.id, "reason": row.end_reason})
