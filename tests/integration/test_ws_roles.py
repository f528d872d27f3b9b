"""Deny by default on the WebSocket: every op of server.gateway.ops.HANDLERS, by every caller.

The WebSocket twin of tests/integration/test_roles.py. The table is written from DESIGN.md and
docs/API.md,
not from the Op objects, and an op without a row fails the test. Each allowed caller sends a
valid command on its own objects (it must succeed) and then the same command on someone else's:
another family's message, contact or visit, another facility's visit (it must fail with the
row's code and change nothing). Callers whose role the op does not admit get `forbidden`;
another facility's staff are told `not_found`, as over HTTP. An unauthenticated socket, or one
that presents a revoked session (cookie or `auth {token}`), gets `unauthorized` and close 4001
whatever the op.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import msgpack
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from server import events
from server.gateway.ops import HANDLERS
from server.schema import connections, utcnow, visits
from store.ids import new_id
from tests.conftest import app_client
from tests.integration.test_roles import ACCOUNT_ROLES, World, build_world, ok, unique
from tests.support.helpers import Api, Who, decode_frame

JSON, MSGPACK = "kinwire.v1.json", "kinwire.v1.msgpack"
CANDIDATE = {"candidate": "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0}
MARKER = "for-the-second-family-only"


class Sock:
    """One test socket: sends commands in its codec and collects the replies."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, codec: str) -> None:
        self.ws, self.codec, self.next_id = ws, codec, 1

    async def call(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to this command, or None if the socket closed instead."""
        command_id, self.next_id = self.next_id, self.next_id + 1
        frame = {"id": command_id, "op": op, "args": args}
        if self.codec == JSON:
            await self.ws.send_str(json.dumps(frame))
        else:
            await self.ws.send_bytes(msgpack.packb(frame))
        while True:
            reply = decode_frame(await self.ws.receive(timeout=5))
            if reply is None or reply.get("id") == command_id:
                return reply

    async def close_code(self) -> int | None:
        while not self.ws.closed:
            msg = await self.ws.receive(timeout=5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        return self.ws.close_code


async def connect(client: TestClient, codec: str, cookie: str | None = None) -> Sock:
    client.session.cookie_jar.clear()  # be exactly who the test says, by token or cookie
    headers = {"Cookie": f"kw_session={cookie}"} if cookie else {}
    ws = await client.ws_connect("/ws", protocols=(codec,), headers=headers)
    return Sock(ws, codec)


async def signed_in(client: TestClient, token: str, codec: str,
                    device: str | None = None) -> Sock:
    """`device`: the kiosk's token, which a kiosk session needs (others ignore it)."""
    sock = await connect(client, codec)
    reply = await sock.call("auth", {"token": token, **({"device_token": device} if device
                                                        else {})})
    assert reply is not None and "ok" in reply, reply
    return sock


@dataclass
class Extra:
    """What belongs to others: a second family and its person in facility A (their contact,
    their message, their visit under way), and a visit under way in facility B."""

    family2: Who
    person2: str
    message2: str
    visit2: str
    visit_b: str
    relay_a: str  # a relay-mode visit in facility A (staff there may watch it)
    relay_b: str  # the same in facility B
    tokens: dict[str, str] = field(default_factory=dict)


async def under_way(api: Api, facility: str, connection: str, family: str, person: str,
                    media: str = "direct") -> str:
    """A visit whose window is open now (booking cannot make one in the past)."""
    now, visit_id = utcnow(), new_id("vis")
    async with api.ctx.store.write() as conn:
        await conn.execute(visits.insert().values(
            id=visit_id, facility_id=facility, connection_id=connection, family_id=family,
            person_id=person, booked_by=family, start_at=now - timedelta(minutes=1),
            end_at=now + timedelta(minutes=29), blocks=1, minute_price=50, media=media,
            record=True, status="open", created_at=now, updated_at=now))
    return visit_id


async def build_extra(world: World) -> Extra:
    api = world.api
    family2 = await api.family("Second")
    ok(await api.buy(family2, 500), 201)
    person2 = await world.new_person()
    link2 = await world.approved(family2, person2)
    message2 = await world.send(family2, person2, f"private {MARKER}")
    visit2 = await under_way(api, world.facility, link2, family2.id, person2)
    person_b = await api.person(world.staff_other, world.other_facility)
    await api.connect(family2, person_b)
    async with api.ctx.store.read() as conn:
        link_b = (await conn.execute(select(connections.c.id).where(
            connections.c.person_id == person_b.id))).scalar_one()
    visit_b = await under_way(api, world.other_facility, link_b, family2.id, person_b.id)
    relay_a = await under_way(api, world.facility, link2, family2.id, person2, "relay")
    relay_b = await under_way(api, world.other_facility, link_b, family2.id, person_b.id,
                              "relay")
    # Something in the second family's own event stream, which nobody else may sync.
    async with api.ctx.store.write() as conn:
        await events.Outbox().emit(conn, family2.id, "balance", {"note": MARKER}, utcnow())
    return Extra(family2, person2, message2, visit2, visit_b, relay_a, relay_b)


@dataclass
class Ctx:
    world: World
    extra: Extra
    client: TestClient
    caller: str
    sock: Sock

    @property
    def party(self) -> Who:
        return self.world.person if self.caller == "person" else self.world.family

    @property
    def contact(self) -> Who:
        return self.world.family if self.caller == "person" else self.world.person

    async def own_visit(self) -> str:
        w = self.world
        return await under_way(w.api, w.facility, w.ids["connection"], w.family.id, w.person.id)

    async def joined(self, visit_id: str) -> None:
        if self.caller not in ("family", "person"):
            return  # cannot join; the op under test must then refuse on the role alone
        reply = await self.sock.call("visit.join", {"visit_id": visit_id})
        assert reply is not None and "ok" in reply, reply


Args = Callable[[Ctx], Awaitable[dict[str, Any]]]
Verify = Callable[[Ctx, dict[str, Any]], Awaitable[None]]


def fixed(args: dict[str, Any] | None = None) -> Args:
    async def build(c: Ctx) -> dict[str, Any]:
        return dict(args or {})
    return build


async def _nothing(c: Ctx, reply: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Expect:
    allowed: frozenset[str]
    own: Args
    foreign: Args | None = None  # the same op on someone else's object
    foreign_code: str = "not_found"
    verify_own: Verify = _nothing  # what a success must (not) show
    verify_foreign: Verify = _nothing  # what the refused call must have left alone
    hidden_from: frozenset[str] = frozenset()  # told not_found: another facility's object
    everywhere: frozenset[str] = frozenset()  # may act on any facility's object (admins)


async def _own_token(c: Ctx) -> dict[str, Any]:
    return {"token": c.world.tokens[c.caller]}


async def _other_token(c: Ctx) -> dict[str, Any]:
    return {"token": c.extra.family2.token}


async def _sync_own_only(c: Ctx, reply: dict[str, Any]) -> None:
    assert MARKER not in json.dumps(reply), f"{c.caller} synced another account's events"


async def _to_contact(c: Ctx) -> dict[str, Any]:
    return {"to": c.contact.id}


async def _to_stranger(c: Ctx) -> dict[str, Any]:
    """The second family's contact (for a family member) or the second family (for the
    person): someone the caller has no connection with."""
    return {"to": c.extra.family2.id if c.caller == "person" else c.extra.person2}


async def _send(c: Ctx) -> dict[str, Any]:
    return {**await _to_contact(c), "body": "hello", "key": unique()}


async def _send_stranger(c: Ctx) -> dict[str, Any]:
    return {**await _to_stranger(c), "body": "hello", "key": unique()}


async def _nothing_sent_to_stranger(c: Ctx, reply: dict[str, Any]) -> None:
    to = (await _to_stranger(c))["to"]
    from server.schema import messages

    async with c.world.api.ctx.store.read() as conn:
        sent = (await conn.execute(select(messages.c.id).where(
            messages.c.sender_id == c.party.id, messages.c.recipient_id == to))).all()
    assert sent == [], f"{c.caller} sent a message to a stranger"


async def _inbox(c: Ctx) -> dict[str, Any]:
    return {"message_id": c.world.ids["to_family" if c.caller == "family" else "to_person"]}


async def _others_message(c: Ctx) -> dict[str, Any]:
    return {"message_id": c.extra.message2}


async def _others_message_unopened(c: Ctx, reply: dict[str, Any]) -> None:
    assert MARKER not in json.dumps(reply)
    from server.schema import messages

    async with c.world.api.ctx.store.read() as conn:
        opened = (await conn.execute(select(messages.c.opened_at).where(
            messages.c.id == c.extra.message2))).scalar_one()
    assert opened is None, "another family's message was marked opened"


async def _own_visit(c: Ctx) -> dict[str, Any]:
    return {"visit_id": await c.own_visit()}


async def _others_visit(c: Ctx) -> dict[str, Any]:
    return {"visit_id": c.extra.visit2}


async def _signal_own(c: Ctx) -> dict[str, Any]:
    visit_id = await c.own_visit()
    await c.joined(visit_id)
    return {"visit_id": visit_id, "candidate": CANDIDATE}


async def _signal_others(c: Ctx) -> dict[str, Any]:
    return {"visit_id": c.extra.visit2, "candidate": CANDIDATE}


async def _media_own(c: Ctx) -> dict[str, Any]:
    visit_id = await c.own_visit()
    await c.joined(visit_id)
    return {"visit_id": visit_id, "state": "connected"}


async def _media_others(c: Ctx) -> dict[str, Any]:
    return {"visit_id": c.extra.visit2, "state": "connected"}


async def _others_visit_untouched(c: Ctx, reply: dict[str, Any]) -> None:
    async with c.world.api.ctx.store.read() as conn:
        row = (await conn.execute(select(visits).where(
            visits.c.id == c.extra.visit2))).one()
    assert (row.status, row.family_media, row.person_media) == ("open", "absent", "absent"), \
        f"{c.caller} changed another family's visit: {row.status} {row.family_media}"


async def _watch_own(c: Ctx) -> dict[str, Any]:
    return {"visit_id": c.extra.relay_a}


async def _watch_other_facility(c: Ctx) -> dict[str, Any]:
    return {"visit_id": c.extra.relay_b}


PARTIES = frozenset({"family", "person"})
EVERY_ACCOUNT = frozenset(ACCOUNT_ROLES)
STAFF_HERE = frozenset({"staff", "admin"})  # "staff": of the visit's facility

# op -> who may send it (DESIGN.md "Roles", API.md "WebSocket /ws") and what it may touch.
EXPECTED: dict[str, Expect] = {
    "ping": Expect(EVERY_ACCOUNT, fixed()),
    # A socket may repeat `auth` for its own account, never switch to someone else's.
    "auth": Expect(EVERY_ACCOUNT, _own_token, _other_token, "already_authenticated"),
    # Everyone's own event stream, and only theirs.
    "sync": Expect(EVERY_ACCOUNT, fixed({"since": 0}), verify_own=_sync_own_only),
    "typing": Expect(PARTIES, _to_contact, _to_stranger, "not_connected"),
    "message.send": Expect(PARTIES, _send, _send_stranger, "not_connected",
                           verify_foreign=_nothing_sent_to_stranger),
    "message.open": Expect(PARTIES, _inbox, _others_message, "not_found",
                           verify_foreign=_others_message_unopened),
    "visit.join": Expect(PARTIES, _own_visit, _others_visit, "not_found",
                         verify_foreign=_others_visit_untouched),
    # Only a visit joined on this socket; another's visit cannot be joined (above).
    "visit.signal": Expect(PARTIES, _signal_own, _signal_others, "not_joined",
                           verify_foreign=_others_visit_untouched),
    "visit.media": Expect(PARTIES, _media_own, _media_others, "not_found",
                          verify_foreign=_others_visit_untouched),
    "visit.leave": Expect(PARTIES, _own_visit, _others_visit, "not_found",
                          verify_foreign=_others_visit_untouched),
    # Relay mode: staff of the visit's facility and admins watch; other staff learn nothing.
    "visit.watch": Expect(STAFF_HERE, _watch_own, _watch_other_facility, "not_found",
                          hidden_from=frozenset({"staff_other"}),
                          everywhere=frozenset({"admin"})),
}


def test_every_ws_op_has_an_expectation() -> None:
    missing = sorted(HANDLERS.keys() - EXPECTED.keys())
    stale = sorted(EXPECTED.keys() - HANDLERS.keys())
    assert not missing, f"ops without a row in test_ws_roles.py EXPECTED: {missing}"
    assert not stale, f"rows in EXPECTED for ops that no longer exist: {stale}"


def _code(reply: dict[str, Any] | None) -> str | None:
    if reply is None or not isinstance(reply.get("error"), dict):
        return None
    return reply["error"].get("code")


async def _as_account(world: World, extra: Extra, client: TestClient, op: str, expect: Expect,
                      caller: str, codec: str) -> list[str]:
    failures: list[str] = []
    sock = await signed_in(client, world.tokens[caller], codec, world.device_token)
    c = Ctx(world, extra, client, caller, sock)
    try:
        reply = await sock.call(op, await expect.own(c))
        where = f"{op} as {caller} ({codec}): {reply!s:.200}"
        if caller in expect.allowed:
            if reply is None or "ok" not in reply:
                failures.append(f"{where}; expected ok (allowed)")
            else:
                await expect.verify_own(c, reply)
        elif caller in expect.hidden_from:
            if _code(reply) != "not_found":
                failures.append(f"{where}; expected not_found (another facility's)")
        elif _code(reply) != "forbidden":
            failures.append(f"{where}; expected forbidden")
        if expect.foreign is not None and caller in expect.allowed:
            reply = await sock.call(op, await expect.foreign(c))
            if caller in expect.everywhere:
                if reply is None or "ok" not in reply:
                    failures.append(f"{op} as {caller} on another facility's object: "
                                    f"{reply!s:.200}; expected ok")
            elif _code(reply) != expect.foreign_code:
                failures.append(f"{op} as {caller} on another's object: {reply!s:.200}; "
                                f"expected {expect.foreign_code}")
            await expect.verify_foreign(c, reply or {})
        # Refusals are answers, not failures: the socket still works.
        pong = await sock.call("ping", {})
        if pong is None or "ok" not in pong:
            failures.append(f"{op} as {caller}: the socket stopped answering ({pong})")
    finally:
        await sock.ws.close()
    return failures


async def _unauthenticated(client: TestClient, op: str, args: dict[str, Any], caller: str,
                           cookie: str | None, codec: str) -> list[str]:
    sock = await connect(client, codec, cookie)
    reply = await sock.call(op, args)
    code = await sock.close_code()
    if _code(reply) != "unauthorized" or code != 4001:
        return [f"{op} as {caller} ({codec}): {reply} close {code}; "
                "expected unauthorized and close 4001"]
    return []


async def test_ws_role_matrix(db_url: str, tmp_path) -> None:
    # Room for the matrix's many short-lived sockets of the same few accounts.
    async with app_client(db_url, tmp_path, ws_connections_per_user_max=100,
                          ws_commands_per_s=500) as client:
        api = Api(client)
        world = await build_world(api)
        extra = await build_extra(world)
        failures: list[str] = []
        calls = 0
        for n, (op, expect) in enumerate(sorted(EXPECTED.items())):
            codec = (JSON, MSGPACK)[n % 2]  # both codecs, alternating by op
            for caller in ACCOUNT_ROLES:
                failures += await _as_account(world, extra, client, op, expect, caller, codec)
                calls += 1
            # No session: the op as a socket's first frame (for `auth`, a made-up token).
            args = {"token": "not-a-token"} if op == "auth" else {}
            failures += await _unauthenticated(client, op, args, "anonymous", None, codec)
            calls += 1
            for role in ACCOUNT_ROLES:  # a revoked session presented as the cookie
                failures += await _unauthenticated(client, op, args, f"revoked_{role} cookie",
                                                   world.tokens[f"revoked_{role}"], codec)
                calls += 1
        for n, role in enumerate(ACCOUNT_ROLES):  # and as `auth {token}`
            failures += await _unauthenticated(client, "auth",
                                               {"token": world.tokens[f"revoked_{role}"]},
                                               f"revoked_{role} token", None,
                                               (JSON, MSGPACK)[n % 2])
            calls += 1
        assert calls == len(EXPECTED) * (2 * len(ACCOUNT_ROLES) + 1) + len(ACCOUNT_ROLES)
        assert not failures, f"{len(failures)} wrong:\n" + "\n".join(failures)


async def test_a_blocked_contact_cannot_join_a_booked_visit(db_url: str, tmp_path) -> None:
    """Blocking (by either side or by staff) stops visits as well as messages."""
    async with app_client(db_url, tmp_path) as client:
        api = Api(client)
        world = await build_world(api, messaging=False)
        async with api.ctx.store.read() as conn:
            link = (await conn.execute(select(connections.c.id).where(
                connections.c.family_id == world.family.id))).scalar_one()
        visit_id = await under_way(api, world.facility, link, world.family.id, world.person.id)
        ok(await api.call("POST", f"/connections/{link}/block", world.staff), 200)
        for who in (world.family, world.person):
            sock = await signed_in(client, who.token, JSON, who.device)
            reply = await sock.call("visit.join", {"visit_id": visit_id})
            assert _code(reply) == "blocked", reply
            await sock.ws.close()
            r = await api.call("GET", f"/visits/{visit_id}/ice", who)  # and no TURN credentials
            assert r.status == 403 and r.code == "blocked", r
        ok(await api.call("POST", f"/connections/{link}/unblock", world.staff), 200)
        sock = await signed_in(client, world.family.token, MSGPACK)
        reply = await sock.call("visit.join", {"visit_id": visit_id})
        assert reply is not None and "ok" in reply, reply
        await sock.ws.close()
        async with api.ctx.store.write() as conn:  # a connection never approved: no visit
            await conn.execute(update(connections).where(connections.c.id == link)
                               .values(status="denied"))
        sock = await signed_in(client, world.person.token, JSON, world.device_token)
        assert _code(await sock.call("visit.join", {"visit_id": visit_id})) == "not_connected"
        await sock.ws.close()
