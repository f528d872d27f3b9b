"""Routes around a visit's call: staff end it, parties fetch their ICE servers."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from server import audit, calls
from server.auth import PARTIES, STAFF
from server.events import Outbox
from server.facilities import Strict
from server.http.routing import Call, Route, json_response
from signalling import visits
from signalling.turn import ice_policy, ice_servers
from signalling.visits import VisitError


class EndIn(Strict):
    reason: Annotated[str, Field(max_length=500)] = ""


async def end_visit(call: Call) -> web.Response:
    """End a visit in progress at once (staff of its facility); the media stops too."""
    body: EndIn = call.body
    me, now, outbox = call.me, call.now(), Outbox()
    async with call.ctx.store.write() as conn:
        row = await visits.get(conn, call.match("visit_id"))
        if me.role != "admin" and row.facility_id != me.facility_id:
            raise VisitError("not_found", "The visit was not found.")
        ended = await visits.end(conn, outbox, row.id, "staff_ended", now)
        if ended is None:
            raise VisitError("not_in_call", f"The visit is {row.status}.")
        await audit.record(conn, actor_id=me.account_id, actor_role=me.role,
                           action="visit.end", facility_id=row.facility_id, target=row.id,
                           at=now, details={"reason": body.reason} if body.reason else {})
    await outbox.signal(call.ctx.broker)
    await calls.announce_end(call.ctx.broker, ended, call.ctx.meters)
    await call.ctx.meters.poke(ended.id)
    return json_response({"visit": visits.public(ended)})


async def visit_ice(call: Call) -> web.Response:
    """STUN/TURN servers for a party of the visit; TURN credentials expire with the window."""
    s = call.ctx.settings
    async with call.ctx.store.read() as conn:
        row = await visits.get(conn, call.match("visit_id"))
        visits.role_of(row, call.me.account_id)
        await calls.require_contact(conn, row)  # no TURN credentials once blocked
    if row.status not in visits.ACTIVE or call.now() >= row.end_at:
        raise VisitError("visit_over", f"The visit is {row.status}.")
    servers = ice_servers(secret=s.turn_secret, turn_urls=list(s.turn_urls),
                          stun_urls=list(s.stun_urls), account_id=call.me.account_id,
                          expires_at=row.end_at)
    return json_response({"ice_servers": servers, "expires_at": row.end_at.isoformat(),
                          "ice_transport_policy": ice_policy(s.ice_relay_only)})


ROUTES = [
    Route("POST", "/visits/{visit_id}/end", end_visit, STAFF, body=EndIn),
    Route("GET", "/visits/{visit_id}/ice", visit_ice, PARTIES),
]
