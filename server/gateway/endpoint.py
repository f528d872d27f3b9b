"""GET /ws: upgrade, authenticate, then one reader loop per socket.

Checks in order: Origin (browsers only send one; it must be ours or allowlisted), subprotocol
(JSON unless msgpack is asked for), authentication (the session cookie at upgrade, or a first
command `auth {token}` within ws_auth_timeout_s, else 4001; a kiosk session also needs its
device's token: the kw_device cookie or X-Device-Token at upgrade, or `auth {token,
device_token}`), the per-user connection limit
(4029). Then every command is rate limited, decoded, checked against its op's roles, handled,
and answered on the same socket in order.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import WSMsgType, web

from common.errors import Refused
from server import calls
from server.auth import session_principal
from server.broker import BrokerUnavailable
from server.events import Outbox
from server.gateway.client import NORMAL, TOO_MANY_CONNECTIONS, UNAUTHORISED, Client
from server.gateway.envelope import CODECS, JSON, BadFrame, decode, reply_error, reply_ok
from server.gateway.hub import Hub
from server.gateway.ops import HANDLERS, WsCall
from server.http.logs import HEADER as REQUEST_ID_HEADER
from server.http.logs import REQUEST_KEY
from server.http.routing import CONTEXT, COOKIE, device_refused, device_token, error_response
from signalling import visits
from store import is_unavailable

log = logging.getLogger("kinwire.gateway")
HUB = web.AppKey("hub", Hub)


def _origin_allowed(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: kiosks and programs authenticate by token
    own = f"{request.scheme}://{request.host}"
    return origin == own or origin in request.app[CONTEXT].settings.allowed_origins


def _refusal(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The HTTP answer to an upgrade refused before it happened (the middlewares pass this
    path through, server/http/routing.py WS_PATH), with the request's id as every answer has."""
    response = error_response(request, exc)
    if response is None:
        raise exc
    response.headers[REQUEST_ID_HEADER] = request.get(REQUEST_KEY, "")
    return response


async def websocket(request: web.Request) -> web.StreamResponse:
    ctx, hub = request.app[CONTEXT], request.app[HUB]
    if not _origin_allowed(request):
        return _refusal(request, Refused("forbidden_origin",
                                          "This origin may not open a socket here."))
    s = ctx.settings
    ws = web.WebSocketResponse(protocols=CODECS, heartbeat=s.ws_heartbeat_s,
                               max_msg_size=s.ws_frame_bytes_max)
    try:
        await ws.prepare(request)
    except web.HTTPException as exc:  # not an upgrade request, or a malformed one
        return _refusal(request, exc)
    client = Client(ws, request, ws.ws_protocol or JSON, queue_max=s.ws_send_queue_max,
                    commands_per_s=s.ws_commands_per_s)
    try:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            found = await session_principal(ctx.store, cookie, ctx.clock())
            if found is not None and not found.device_matches(device_token(request)):
                client.close(UNAUTHORISED, "device required")
                found = None
            client.principal = found
        auth_id = None
        if client.principal is None and not client.closing:
            auth_id = await _authenticate(client, request)
        if client.principal is not None:
            await _attach(client, hub)
        if auth_id is not None and not client.closing:
            # Answered once attached, so that a client that saw `ok` misses no push.
            client.send(reply_ok(auth_id, {"account_id": client.principal.account_id,
                                           "role": client.principal.role}))
        if client.principal is not None and not client.closing:
            await _read(client, request)
    except Exception as exc:  # logged as any request's would be; the socket closes below
        error_response(request, exc)
    finally:
        # aiohttp cancels a WebSocket handler whose peer went away; the clean-up must not be
        # cut in half (a database call cancelled midway loses the party's departure), so it
        # runs as its own task, which the hub waits for at shutdown.
        await hub.shielded(_leave(client, request))
    return ws


async def _leave(client: Client, request: web.Request) -> None:
    await _drop_visits(client, request)
    await request.app[HUB].detach(client)
    if not client.closing:
        client.close(NORMAL, "bye")
    await client.finish()


async def _drop_visits(client: Client, request: web.Request) -> None:
    """A socket that closes without hanging up leaves its visits: the meter pauses and the
    peer is told; the party may rejoin inside the window."""
    ctx = request.app[CONTEXT]
    feed = request.app[HUB].feeds.get(client.principal.account_id)
    for visit_id in list(client.visits):
        if any(other is not client and visit_id in other.visits
               for other in (feed.clients if feed else ())):
            # The party is in the visit on a newer socket of this process (its network came
            # back and it rejoined before this one's close was noticed): it has not left.
            continue
        outbox = Outbox()
        try:
            async with ctx.store.write() as conn:
                row = await visits.drop(conn, outbox, visit_id, client.principal.account_id,
                                        ctx.clock(), node=ctx.meters.node_id)
            await outbox.signal(ctx.broker)
            await calls.push_live(ctx.broker, visits.peer_of(row, client.principal.account_id),
                                  "visit.peer", {"visit_id": visit_id, "present": False})
            await ctx.meters.poke(visit_id)
        except Exception:
            log.exception("could not record that a party left visit %s", visit_id)


async def _attach(client: Client, hub: Hub) -> None:
    try:
        await hub.attach(client)
    except Refused as exc:
        client.send(reply_error(None, exc.code, exc.message))
        client.close(TOO_MANY_CONNECTIONS, exc.code)  # the only refusal attach makes


async def _authenticate(client: Client, request: web.Request) -> int | str | None:
    """The first frame must be `auth {token}`; anything else, or nothing in time, is 4001.
    Returns the command id to answer once the socket is attached."""
    ctx = request.app[CONTEXT]
    try:
        msg = await client.ws.receive(timeout=ctx.settings.ws_auth_timeout_s)
    except TimeoutError:
        client.close(UNAUTHORISED, "authenticate first")
        return None
    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        command = decode(client.codec, msg.data)
    except BadFrame:
        client.close(UNAUTHORISED, "authenticate first")
        return None
    token = command.args.get("token")
    if command.op != "auth" or not isinstance(token, str) or not 0 < len(token) <= 200:
        client.send(reply_error(command.id, "unauthorized", "Send auth {token} first."))
        client.close(UNAUTHORISED, "authenticate first")
        return None
    client.principal = await session_principal(ctx.store, token, ctx.clock())
    if client.principal is None:
        client.send(reply_error(command.id, "unauthorized", "The token is not valid."))
        client.close(UNAUTHORISED, "bad token")
        return None
    device = command.args.get("device_token")
    if not client.principal.device_matches(device if isinstance(device, str)
                                           else device_token(request)):
        client.principal = None
        refused = device_refused()
        client.send(reply_error(command.id, refused.code, refused.message))
        client.close(UNAUTHORISED, "device required")
        return None
    return command.id


async def _read(client: Client, request: web.Request) -> None:
    ctx, hub = request.app[CONTEXT], request.app[HUB]
    async for msg in client.ws:
        if client.closing:
            return
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        # A token already in hand costs nothing; drawing more (Redis: a batch) may wait.
        if not client.budget.take() and not await client.budget.reserve():
            client.send(reply_error(None, "rate_limited", "Too many commands; slow down."))
            continue
        try:
            command = decode(client.codec, msg.data)
        except BadFrame as exc:
            client.send(reply_error(exc.command_id, exc.code, exc.message))
            continue
        client.send(await _dispatch(WsCall(client, ctx, hub, command.args), command.op,
                                    command.id))


async def _dispatch(call: WsCall, op: str, command_id: Any) -> dict[str, Any]:
    entry = HANDLERS.get(op)
    if entry is None:
        return reply_error(command_id, "unknown_op", f"No such op {op!r}.")
    if call.me.role not in entry.roles:
        return reply_error(command_id, "forbidden", "You may not do that.")
    try:
        return reply_ok(command_id, await entry.handler(call))
    except Refused as exc:
        return reply_error(command_id, exc.code, exc.message)
    except Exception as exc:
        if is_unavailable(exc) or isinstance(exc, BrokerUnavailable):
            log.warning("op %s: service unavailable: %s", op, type(exc).__name__)
            return reply_error(command_id, "unavailable",
                               "A service we depend on is not answering; try again.")
        log.exception("op %s failed", op)
        return reply_error(command_id, "internal_error", "Something went wrong on our side.")
