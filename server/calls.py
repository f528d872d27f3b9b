"""The glue between the visit state machine (signalling/) and this process's sockets and
broker: live pushes to a party on whatever process it is connected to."""

from __future__ import annotations

import logging
from typing import Any

from server import connections, events
from server.broker import Broker, BrokerUnavailable
from server.errors import ApiError
from signalling.visits import VisitError

log = logging.getLogger("kinwire.calls")


def api_error(exc: VisitError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


async def require_contact(conn: Any, row: Any) -> None:
    """A visit was booked on an approved contact; a block since (by either side or by staff),
    or a connection no longer approved, stops the visit as it stops messages."""
    link = await connections.get(conn, row.connection_id)
    if link.blocked_by is not None:
        raise ApiError(403, "blocked", "This connection is blocked.")
    if link.status != "approved":
        raise ApiError(403, "not_connected", "Only an approved contact.")


async def push_live(broker: Broker, account_id: str, kind: str, data: dict[str, Any]) -> bool:
    """A live-only push (no seq): lost if the broker is down, which the clients tolerate
    (signalling is retried by ICE restarts, ends are also stored as visit.updated events)."""
    try:
        await broker.publish(events.channel(account_id), {"live": {"type": kind, "data": data}})
    except BrokerUnavailable:
        log.warning("broker unavailable: live %s push dropped", kind)
        return False
    return True


async def announce_end(broker: Broker, row: Any, meters: Any = None) -> None:
    """Both parties hear `visit.ended`; with `meters`, every process's gateway drops its cached
    "in a call" for the visit at once (server/gateway/ops.py visit_signal)."""
    if meters is not None:
        await meters.announce_end(row.id)
    for party in (row.family_id, row.person_id):
        await push_live(broker, party, "visit.ended",
                        {"visit_id": row.id, "reason": row.end_reason})
