"""The WebSocket ops: an explicit dispatch table, each op with the roles it admits.

Handlers receive a WsCall, return the reply's `ok` value or raise Refused; they parse, check,
call the service and answer, like the HTTP handlers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from common.errors import Refused
from server import audit, calls, connections, events, messages
from server.auth import ANY_SESSION, PARTIES, STAFF, Principal, principal_for
from server.broker import BrokerUnavailable
from server.connections import is_approved_contact
from server.context import Context
from server.events import Outbox
from signalling import visits
from signalling.turn import ice_policy, ice_servers
from store import Record

if TYPE_CHECKING:
    from server.gateway.client import Client
    from server.gateway.hub import Hub



@dataclass
class WsCall:
    client: Client
    ctx: Context
    hub: Hub
    args: dict[str, Any]

    @property
    def me(self) -> Principal:
        assert self.client.principal is not None
        return self.client.principal

    def arg_int(self, name: str, *, lo: int = 0) -> int:
        value = self.args.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise Refused("invalid_input", f"{name} must be a whole number >= {lo}")
        return value

    def arg_str(self, name: str, *, max_len: int = 64) -> str:
        value = self.args.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= max_len:
            raise Refused("invalid_input", f"{name} must be a string of 1..{max_len}")
        return value


@dataclass(frozen=True)
class Op:
    handler: Callable[[WsCall], Awaitable[Any]]
    roles: frozenset[str]


async def ping(call: WsCall) -> dict[str, Any]:
    return {"pong": True, "at": call.ctx.clock().isoformat()}


async def auth_again(call: WsCall) -> dict[str, Any]:
    """A socket authenticated by its cookie may still send `auth`: fine for the same account."""
    token = call.arg_str("token", max_len=200)
    async with call.ctx.store.read() as conn:
        other = await principal_for(conn, token, call.ctx.clock())
    if other is None or other.account_id != call.me.account_id:
        raise Refused("already_authenticated",
                       "This socket is already authenticated as someone else.")
    return {"account_id": call.me.account_id, "role": call.me.role}


async def sync(call: WsCall) -> dict[str, Any]:
    return await call.hub.sync(call.client, call.arg_int("since"))


async def typing(call: WsCall) -> dict[str, Any]:
    """Live only, never stored: goes to the contact's sockets on every process."""
    to = call.arg_str("to")
    async with call.ctx.store.read() as conn:
        if not await is_approved_contact(conn, call.me.account_id, to):
            raise Refused("not_connected", "Only an approved contact.")
    frame = {"type": "typing", "data": {"from": call.me.account_id}}
    try:
        await call.ctx.broker.publish(events.channel(to), {"live": frame})
    except BrokerUnavailable:
        return {"delivered": False}
    return {"delivered": True}


async def send_message(call: WsCall) -> dict[str, Any]:
    """As POST /messages; the idempotency key travels as args.key."""
    from server.http.routes_messages import MessageIn, draft_from

    key = call.arg_str("key", max_len=128)
    fields = {k: v for k, v in call.args.items() if k != "key"}
    try:
        body = MessageIn.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise Refused("invalid_input",
                       f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    draft = draft_from(call.ctx.settings, body, key)
    outbox = Outbox()
    started = time.perf_counter()  # metrics: kinwire_send_seconds
    now = call.ctx.clock()
    # Group commit: concurrent sends share one transaction; this returns after its COMMIT.
    shown = await call.ctx.store.write_grouped(
        lambda conn: messages.send(conn, outbox, call.me, draft, now))
    await outbox.signal(call.ctx.broker)
    call.ctx.metrics.observe("kinwire_send_seconds", time.perf_counter() - started)
    call.ctx.metrics.inc("kinwire_messages_sent_total")
    return {"message": shown}


async def open_message(call: WsCall) -> dict[str, Any]:
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        shown = await messages.open_message(conn, outbox, call.me, call.arg_str("message_id"),
                                            call.ctx.clock())
    await outbox.signal(call.ctx.broker)
    return {"message": shown}


async def _in_visit(call: WsCall, work):
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        result = await work(conn, outbox)
    await outbox.signal(call.ctx.broker)
    return result


@dataclass(frozen=True)
class InCall:
    """What a socket's `visit.signal` needs, as of `checked_at` (monotonic): the peer and the
    media mode never change; the status is trusted for CHECK_FRESH_S, or until this process
    hears that the visit ended (Meters.ended: every end is announced on the meters channel)."""
    peer: str
    media: str
    checked_at: float


# A signal re-reads the visit row when its last check is older than this. Ends are heard at
# once on the meters channel; this bounds a missed notice (the broker away) to two seconds.
CHECK_FRESH_S = 2.0
JOIN_LIVE_WAIT_S = 5.0  # how long a join waits for its socket's feed to be subscribed


def _cached(call: WsCall, visit_id: str) -> InCall | None:
    known = call.client.in_call.get(visit_id)
    if known is None or time.monotonic() - known.checked_at > CHECK_FRESH_S:
        return None
    ended_at = call.ctx.meters.ended.get(visit_id)
    if ended_at is not None and ended_at >= known.checked_at:
        return None
    return known


def _remember(call: WsCall, visit_id: str, row: Record, checked_at: float) -> InCall:
    known = call.client.in_call[visit_id] = InCall(
        visits.peer_of(row, call.me.account_id), row.media, checked_at)
    return known


async def visit_join(call: WsCall) -> dict[str, Any]:
    visit_id = call.arg_str("visit_id")
    now = call.ctx.clock()

    async def work(conn, outbox):
        # One read for the visit and its connection's block and status; the checks below run
        # in the same order as with two reads.
        row = await calls.visit_and_link(conn, visit_id)
        visits.role_of(row, call.me.account_id)  # a stranger learns nothing: not_found
        calls.require_contact_of(row)
        return await visits.join(conn, outbox, visit_id, call.me.account_id, now, row,
                                 node=call.ctx.meters.node_id)

    # The peer offers as soon as it hears we are here, over live frames that are lost if our
    # feed is not yet subscribed (a slow broker at connect): be reachable before announcing.
    if not await call.hub.wait_live(call.client, JOIN_LIVE_WAIT_S):
        raise Refused("unavailable", "Live delivery is not ready; join again shortly.")
    checked_at = time.monotonic()
    # In the socket's visits before the join is written: an older socket of the party's on
    # this process that closes meanwhile then does not drop it (endpoint._drop_visits).
    was_in = visit_id in call.client.visits
    call.client.visits.add(visit_id)
    admitted: dict[str, Any] = {}
    try:
        joined = await _in_visit(call, work)
        if joined.visit.media == "relay":
            admitted = await _admit(call, joined, now)
    except BaseException:
        if not was_in:
            call.client.visits.discard(visit_id)
        raise
    _remember(call, visit_id, joined.visit, checked_at)
    await calls.push_live(call.ctx.broker, joined.peer_id, "visit.peer",
                          {"visit_id": visit_id, "present": True})
    await _live_news(call, joined.visit, now)
    peer_present = joined.peer_present
    peer_node = getattr(joined.visit, "person_node" if joined.role == "family" else "family_node")
    if peer_present and peer_node not in (None, call.ctx.meters.node_id):
        # The row still names a peer whose process may have died (a meter drops it within a
        # liveness lease): offering to it would only race the offer it makes when it is back.
        alive, known = await call.ctx.meters.alive()
        peer_present = not known or peer_node in alive
    reply = {"visit": visits.public(joined.visit), "role": joined.role,
             "peer_present": peer_present, "media": joined.visit.media,
             # the meter as stored: a page back from an outage shows the server's paid minutes
             # and balance at once, not the last tick it happened to hear (ticks are live-only)
             "meter": visits.meter_view(joined.visit),
             # the length of a billed minute: "time left at your balance" is counted in them
             "minute_s": call.ctx.settings.visit_minute_s,
             # how long the kiosk's outbound media may stall before it reports `sending: false`
             "media_stall_s": call.ctx.settings.media_stall_s,
             # how long the other party's media may stop before the trusted side reports it
             "media_gap_s": min(call.ctx.settings.media_gap_s, call.ctx.settings.media_stall_s)}
    reply.update(admitted)  # Janus: this party's way into the visit's room
    return reply


# --- relay mode: the deployment's engine (signalling/relay_media.py) ---
async def _admit(call: WsCall, joined: visits.Joined, now: Any) -> dict[str, Any]:
    """The visit's media placed if nobody has (on a process with room, or a live Janus
    server), and what the join reply adds; when the engine refuses (every process full, no
    Janus server answering) the join is undone (the party is absent again) and refused."""
    try:
        return await call.ctx.media.admit(joined.visit, joined.role, call.me.account_id)
    except Refused:
        await _in_visit(call, lambda conn, outbox: visits.drop(
            conn, outbox, joined.visit.id, call.me.account_id, now,
            node=call.ctx.meters.node_id))
        raise
# --- end relay mode ---


async def visit_signal(call: WsCall) -> dict[str, Any]:
    visit_id = call.arg_str("visit_id")
    signal = visits.checked_signal(call.args)
    if visit_id not in call.client.visits:
        raise Refused("not_joined", "Join the visit first.")
    # The join (or a check under CHECK_FRESH_S ago) found the visit in a call: no store read
    # per signal, which cost most of a signal's CPU (docs/BENCHMARKS.md, "Signalling").
    known = _cached(call, visit_id)
    if known is None:
        checked_at = time.monotonic()
        async with call.ctx.store.read() as conn:
            row = await visits.get(conn, visit_id)
            visits.role_of(row, call.me.account_id)
        if row.status not in visits.IN_CALL:
            call.client.in_call.pop(visit_id, None)
            raise Refused("not_in_call", f"The visit is {row.status}.")
        known = _remember(call, visit_id, row, checked_at)
    peer = known.peer
    # --- relay mode: the engine answers (or refuses); nothing goes to the peer ---
    if known.media == "relay":
        return await call.ctx.media.signal(visit_id, call.me.account_id, signal)
    # --- end relay mode ---
    delivered = await calls.push_live(call.ctx.broker, peer, "visit.signal",
                                      {"visit_id": visit_id, "from": call.me.account_id,
                                       **signal})
    return {"relayed": delivered}


async def visit_media(call: WsCall) -> dict[str, Any]:
    """A party's report of its own peer connection, and (the kiosk) whether its outbound
    media is advancing: `sending`, optional. Who is believed is the meter's trust model's
    business (billing/meter.py, docs/visits.md "Trust")."""
    visit_id = call.arg_str("visit_id")
    state = call.args.get("state")
    if state not in ("connected", "disconnected"):
        raise Refused("invalid_input", "state is connected or disconnected")
    sending = call.args.get("sending")
    if sending is not None and not isinstance(sending, bool):
        raise Refused("invalid_input", "sending is true or false")
    stalled_s = call.args.get("stalled_s")
    if stalled_s is not None and (isinstance(stalled_s, bool)
                                  or not isinstance(stalled_s, int | float) or stalled_s < 0):
        raise Refused("invalid_input", "stalled_s is a number of seconds, 0 or more")
    link = _link(call.args)
    now = call.ctx.clock()
    # A stop reaches back to the last frame seen, at most the stall threshold (a client that
    # says more gets the threshold): visits.set_media, docs/visits.md "Outages".
    stopped_at = None
    if state == "disconnected" and stalled_s is not None:
        stopped_at = now - timedelta(seconds=min(float(stalled_s),
                                                 call.ctx.settings.media_stall_s))
    row = await _in_visit(call, lambda conn, outbox: visits.set_media(
        conn, outbox, visit_id, call.me.account_id, state == "connected", now,
        node=call.ctx.meters.node_id, sending=sending, stopped_at=stopped_at, link=link))
    await call.ctx.meters.poke(visit_id)
    await _live_news(call, row, now)
    return {"visit": visits.public(row)}


def _link(args: dict[str, Any]) -> tuple[str, str | None] | None:
    """visit.media's optional `quality` (good, fair, poor: the link as the reporting page
    measures it) and `quality_reason` (a short text, e.g. "9 frames a second, 6% loss")."""
    quality, reason = args.get("quality"), args.get("quality_reason")
    if quality is None:
        if reason is not None:
            raise Refused("invalid_input", "quality_reason comes with a quality")
        return None
    if quality not in visits.LINK_QUALITIES:
        raise Refused("invalid_input", "quality is good, fair or poor")
    if reason is not None and (not isinstance(reason, str) or not reason.isprintable()
                               or len(reason) > visits.LINK_REASON_CHARS_MAX):
        raise Refused("invalid_input", f"quality_reason is a line of text of at most "
                                       f"{visits.LINK_REASON_CHARS_MAX} characters")
    return quality, reason


async def _live_news(call: WsCall, row: Record, now: datetime) -> None:
    """`visit.live` to both parties when this command made the visit live: a report, or a
    join (the kiosk's report counts from before the family joins: docs/visits.md, "Trust")."""
    if row.status == "live" and row.media_changed_at == now:
        for party in (row.family_id, row.person_id):
            await calls.push_live(call.ctx.broker, party, "visit.live", {"visit_id": row.id})


async def visit_leave(call: WsCall) -> dict[str, Any]:
    """Hang up: the visit ends for both (`hung_up`)."""
    visit_id = call.arg_str("visit_id")
    now = call.ctx.clock()

    async def work(conn, outbox):
        row = await visits.get(conn, visit_id)
        visits.role_of(row, call.me.account_id)
        return await visits.end(conn, outbox, visit_id, "hung_up", now)

    row = await _in_visit(call, work)
    call.client.visits.discard(visit_id)
    call.client.in_call.pop(visit_id, None)
    if row is not None:
        await calls.announce_end(call.ctx.broker, row, call.ctx.meters)
        await call.ctx.meters.poke(visit_id)
    return {"ended": row is not None}


# --- relay mode: staff watch a visit live (signalling/relay.py, docs/visits.md) ---
async def visit_watch(call: WsCall) -> dict[str, Any]:
    """Staff of the visit's facility (or an admin) watch a relay-mode visit in a call.
    `visit.watch {visit_id}` answers the ICE servers. The staff client then sends its
    receive-only offer (audited: that starts the watch) and any trickled candidates as
    `visit.watch {visit_id, description | candidate}`; the answer comes as a push
    `visit.signal {visit_id, from: "server", description}`."""
    visit_id = call.arg_str("visit_id")
    signal = None
    if "description" in call.args or "candidate" in call.args:
        signal = visits.checked_signal(call.args)
    me, now, s = call.me, call.ctx.clock(), call.ctx.settings
    async with call.ctx.store.write() as conn:
        row = await visits.get(conn, visit_id)
        if me.role != "admin" and row.facility_id != me.facility_id:
            raise Refused("not_found", "The visit was not found.")
        if row.media != "relay":
            raise Refused("not_relayed", "Only relay-mode visits can be watched.")
        if row.status not in visits.IN_CALL:
            raise Refused("not_in_call", f"The visit is {row.status}.")
        # A privileged contact's visit (attorney, clergy) is neither recorded nor monitored:
        # checked against the mark as it stands now, on every watch command (the first one and
        # the offer that starts the media).
        if (await connections.get(conn, row.connection_id)).privileged:
            raise Refused("privileged", "A privileged visit cannot be watched.")
        media = call.ctx.media
        media.check_watch(row, signal)
        if (signal is not None and "description" in signal) or media.watch_starts_at_reply:
            await audit.record(conn, actor_id=me.account_id, actor_role=me.role,
                               action="visit.watch", facility_id=row.facility_id,
                               target=row.id, at=now, details={})
    if signal is not None:
        return await media.signal(visit_id, me.account_id, signal, watch=True)
    servers = ice_servers(secret=s.turn_secret, turn_urls=list(s.turn_urls),
                          stun_urls=list(s.stun_urls), account_id=me.account_id,
                          expires_at=row.end_at)
    reply = {"visit": visits.public(row), "ice_servers": servers,
             "ice_transport_policy": ice_policy(s.ice_relay_only)}
    reply.update(media.watch_reply(row, me.account_id))
    return reply
# --- end relay mode ---


HANDLERS: dict[str, Op] = {
    "visit.join": Op(visit_join, PARTIES),
    "visit.signal": Op(visit_signal, PARTIES),
    "visit.media": Op(visit_media, PARTIES),
    "visit.leave": Op(visit_leave, PARTIES),
    "visit.watch": Op(visit_watch, STAFF),  # relay mode
    "message.send": Op(send_message, PARTIES),
    "message.open": Op(open_message, PARTIES),
    "ping": Op(ping, ANY_SESSION),
    "auth": Op(auth_again, ANY_SESSION),
    "sync": Op(sync, ANY_SESSION),
    "typing": Op(typing, PARTIES),
}
