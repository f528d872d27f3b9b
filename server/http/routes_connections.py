"""Connection routes: request, list, approve/deny, block/unblock, privileged."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field

from common.errors import Refused
from server import audit, connections
from server.auth import FAMILY, PERSON
from server.events import Outbox
from server.facilities import Strict
from server.http.routing import Call, Route, json_response

PARTIES_AND_STAFF = frozenset({"family", "person", "staff"})


class ConnectionRequest(Strict):
    person_id: Annotated[str, Field(min_length=1, max_length=32)]
    relationship: Literal[connections.RELATIONSHIPS] | None = Field(
        None, description="what the family member is to the person; shown with the request")


class Privileged(Strict):
    privileged: bool


async def _done(call: Call, outbox: Outbox, shown: dict, status: int = 200) -> web.Response:
    await outbox.signal(call.ctx.broker)
    return json_response({"connection": shown}, status)


async def request_connection(call: Call) -> web.Response:
    """Ask an incarcerated person to approve you as a contact."""
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        shown = await connections.request(conn, outbox, family_id=call.me.account_id,
                                          person_id=call.body.person_id, at=call.now(),
                                          relationship=call.body.relationship)
    return await _done(call, outbox, shown, 201)


async def list_connections(call: Call) -> web.Response:
    """Your connections (staff: the facility's)."""
    me = call.me
    async with call.ctx.store.read() as conn:
        if me.role == "staff":
            rows = await connections.listing(conn, facility_id=me.facility_id)
        else:
            rows = await connections.listing(conn, account_id=me.account_id)
    return json_response({"connections": rows})


async def _decide(call: Call, status: str) -> web.Response:
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        row = await connections.get(conn, call.match("connection_id"))
        if row.person_id != call.me.account_id:
            raise Refused("not_found", "The connection was not found.")
        if row.status != "requested":
            raise Refused("not_requested", f"The connection is {row.status}, not requested.")
        shown = await connections.change(conn, outbox, row.id, status=status, at=call.now())
    return await _done(call, outbox, shown)


async def approve(call: Call) -> web.Response:
    """Approve a contact's request (the person)."""
    return await _decide(call, "approved")


async def deny(call: Call) -> web.Response:
    """Deny a contact's request (the person)."""
    return await _decide(call, "denied")


async def _set_block(call: Call, blocked: bool) -> web.Response:
    me, now, outbox = call.me, call.now(), Outbox()
    async with call.ctx.store.write() as conn:
        row = await connections.get(conn, call.match("connection_id"))
        if me.role == "staff":
            call.require_facility(row.facility_id)
        side = connections.side_of(row, me.role, me.account_id)
        shown, changed = await connections.set_block(conn, outbox, row, side=side,
                                                     actor_id=me.account_id, blocked=blocked,
                                                     at=now)
        # Every block and unblock, by any side, is on the facility's record.
        await audit.record(conn, actor_id=me.account_id, actor_role=me.role,
                           action="connection.block" if blocked else "connection.unblock",
                           facility_id=row.facility_id, target=row.id, at=now,
                           details={"side": side, "changed": changed})
    return await _done(call, outbox, shown)


async def block(call: Call) -> web.Response:
    """Block a connection (either side, or staff of the facility)."""
    return await _set_block(call, True)


async def unblock(call: Call) -> web.Response:
    """Lift your own block (staff: the staff block); another side's block stays."""
    return await _set_block(call, False)


async def set_privileged(call: Call) -> web.Response:
    """Mark a contact privileged (attorney, clergy): their visits are never recorded."""
    me, now, outbox = call.me, call.now(), Outbox()
    async with call.ctx.store.write() as conn:
        row = await connections.get(conn, call.match("connection_id"))
        call.require_facility(row.facility_id)
        shown = await connections.change(conn, outbox, row.id, at=now,
                                         privileged=call.body.privileged)
        await audit.record(conn, actor_id=me.account_id, actor_role=me.role,
                           action="connection.privileged", facility_id=row.facility_id,
                           target=row.id, at=now, details={"privileged": call.body.privileged})
    return await _done(call, outbox, shown)


ROUTES = [
    Route("POST", "/connections", request_connection, FAMILY, body=ConnectionRequest),
    Route("GET", "/connections", list_connections, PARTIES_AND_STAFF),
    Route("POST", "/connections/{connection_id}/approve", approve, PERSON),
    Route("POST", "/connections/{connection_id}/deny", deny, PERSON),
    Route("POST", "/connections/{connection_id}/block", block, PARTIES_AND_STAFF),
    Route("POST", "/connections/{connection_id}/unblock", unblock, PARTIES_AND_STAFF),
    Route("POST", "/connections/{connection_id}/privileged", set_privileged,
          frozenset({"staff"}), body=Privileged),
]
