"""TURN: REST API credentials on a private coturn, and the reference visit client's WebRTC half.

Every packet stays on loopback: coturn listens and relays on 127.0.0.1 and reaches peers on
127.0.0.1 alone; the aiortc peers run relay-only ICE against it, so they gather no host candidate
(docs/turn.md). The visit-client test talks to TestRelay below: a minimal stand-in for the real
server's signalling (auth, visit.join, visit.signal relay, visit.media, visit.leave, /ice), written
for this test only. The end-to-end visit against the real server lives in the visit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import msgpack
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from aiortc import RTCIceGatherer, RTCIceTransport

from signalling.turn import coturn_config, ice_servers, turn_password, turn_username
from signalling.visit_client import VisitClient, rtc_configuration
from tests.support.turn_server import private_coturn

DOC = Path(__file__).resolve().parents[2] / "docs" / "turn.md"
PRODUCTION = {"secret": "<static-auth-secret>", "realm": "turn.example.org",
              "listening_ip": "<public-ip>", "listening_port": 3478, "relay_ip": "<public-ip>",
              "min_port": 49152, "max_port": 65535,
              "log_file": "/var/log/turnserver/kinwire.log",
              "pid_file": "/run/turnserver/turnserver.pid", "userdb": "/var/lib/turn/turndb"}
TEST = {"secret": "<random per run>", "realm": "kinwire.test", "listening_ip": "127.0.0.1",
        "listening_port": "<free port>", "relay_ip": "127.0.0.1", "min_port": "<first>",
        "max_port": "<first+31>", "log_file": "<tmp>/turn-<port>.log",
        "pid_file": "<tmp>/turn.pid", "userdb": "<tmp>/turndb", "loopback_test": True}


def test_the_documented_coturn_configs_are_the_ones_rendered() -> None:
    doc = DOC.read_text()
    assert coturn_config(**PRODUCTION) in doc
    assert coturn_config(**TEST) in doc
    assert "allow-loopback-peers" not in coturn_config(**PRODUCTION)


def test_ice_servers_carry_rest_api_credentials() -> None:
    end = datetime(2031, 5, 1, 12, 30, tzinfo=UTC)
    servers = ice_servers(secret="s3cret", turn_urls=["turn:turn.example:3478?transport=udp"],
                          stun_urls=["stun:turn.example:3478"], account_id="acc_1",
                          expires_at=end)
    assert servers[0] == {"urls": ["stun:turn.example:3478"]}
    turn = servers[1]
    assert turn["username"] == f"{int(end.timestamp())}:acc_1"
    # As `printf %s 1935405000:acc_1 | openssl dgst -sha1 -hmac s3cret -binary | base64` says.
    assert turn["username"] == "1935405000:acc_1"
    assert turn["credential"] == "W4M38ncZqng/dzVmgWMuybfNkEU="
    assert ice_servers(secret="", turn_urls=[], stun_urls=[], account_id="a",
                       expires_at=end) == []
    with pytest.raises(ValueError):
        turn_username("a:b", end)
    with pytest.raises(ValueError):
        turn_username("a", datetime(2031, 5, 1))  # naive: ambiguous
    with pytest.raises(ValueError):
        ice_servers(secret="", turn_urls=["turn:x"], stun_urls=[], account_id="a", expires_at=1)


def test_loopback_only_refuses_far_ice_servers() -> None:
    with pytest.raises(ValueError):
        rtc_configuration([{"urls": ["turn:192.0.2.7:3478"], "username": "u",
                            "credential": "c"}], loopback_only=True)
    with pytest.raises(ValueError):
        rtc_configuration([{"urls": "stun:127.0.0.1:3478"}], loopback_only=True)  # no TURN
    config = rtc_configuration([{"urls": "turn:127.0.0.1:3478", "username": "u",
                                 "credential": "c"}], loopback_only=True)
    assert config.iceTransportPolicy.value == "relay"
    assert rtc_configuration([]).iceServers == []  # never aiortc's public STUN default


@contextlib.asynccontextmanager
async def _allocation(turn, username: str, password: str) -> AsyncIterator[TurnClientUdpProtocol]:
    """A TURN allocation on `turn` (TransactionFailed when refused), deleted on exit."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(turn.address, username=username, password=password,
                                      lifetime=600, channel_refresh_time=300),
        remote_addr=turn.address)
    try:
        await client.connect()
        yield client
    finally:
        if client.relayed_address is not None:
            await client.delete()  # a Refresh with lifetime 0; closes the socket
        transport.close()


async def _allocate(turn, username: str, password: str) -> tuple[str, int]:
    async with _allocation(turn, username, password) as client:
        assert client.relayed_address is not None
        return client.relayed_address


async def _refused(turn, username: str, password: str) -> int:
    with pytest.raises(stun.TransactionFailed) as failure:
        await _allocate(turn, username, password)
    return failure.value.response.attributes["ERROR-CODE"][0]


async def _permission(turn, username: str, password: str, peer: str) -> int:
    """CreatePermission for `peer` on a fresh allocation: 200, or coturn's error code. A
    permission is state inside coturn: asking for one sends nothing to the peer."""
    async with _allocation(turn, username, password) as client:
        request = stun.Message(message_method=stun.Method.CREATE_PERMISSION,
                               message_class=stun.Class.REQUEST)
        request.attributes["XOR-PEER-ADDRESS"] = (peer, 9)
        try:
            await client.request_with_retry(request)
        except stun.TransactionFailed as exc:
            return exc.response.attributes["ERROR-CODE"][0]
        return 200


async def test_rest_credentials_allocate_and_forged_or_expired_ones_are_refused() -> None:
    async with private_coturn() as turn:
        # The real clock on purpose: coturn checks a credential's expiry against it. Only
        # offsets of minutes from now are used, so the hour and date cannot matter.
        soon = int(time.time()) + 300
        good = ice_servers(secret=turn.secret, turn_urls=[turn.url], stun_urls=[],
                           account_id="acc_family", expires_at=soon)[0]
        user, password = good["username"], good["credential"]

        host, port = await _allocate(turn, user, password)
        assert host == "127.0.0.1" and turn.min_port <= port <= turn.max_port

        # aiortc itself, relay-only: exactly one candidate, a relay on loopback.
        config = rtc_configuration([good], loopback_only=True)
        gatherer = RTCIceGatherer(iceServers=config.iceServers,
                                  iceTransportPolicy=config.iceTransportPolicy)
        await gatherer.gather()
        candidates = gatherer.getLocalCandidates()
        await RTCIceTransport(gatherer).stop()
        assert [(c.type, c.ip) for c in candidates] == [("relay", "127.0.0.1")]

        past = int(time.time()) - 5
        expired_user = turn_username("acc_family", past)
        assert await _refused(turn, expired_user, turn_password(turn.secret, expired_user)) == 401
        assert await _refused(turn, user, turn_password("not-the-secret", user)) == 401
        assert await _refused(turn, user.replace("acc_family", "acc_other"), password) == 401
        later = turn_username("acc_family", soon + 86400)
        assert await _refused(turn, later, password) == 401  # stretched expiry, old HMAC

        # The private coturn relays to loopback only: private and public peers are forbidden.
        assert await _permission(turn, user, password, "127.0.0.1") == 200
        for peer in ("10.0.0.1", "172.16.0.1", "192.168.1.1", "203.0.113.5"):
            assert await _permission(turn, user, password, peer) == 403, peer


async def test_the_production_config_relays_to_no_private_or_loopback_peer() -> None:
    async with private_coturn(loopback_test=False) as turn:
        user = turn_username("acc_family", int(time.time()) + 300)
        password = turn_password(turn.secret, user)
        assert (await _allocate(turn, user, password))[0] == "127.0.0.1"
        for peer in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.1.1"):
            assert await _permission(turn, user, password, peer) == 403, peer


# --- a test-only signalling relay ------------------------------------------------------------

class TestRelay:
    """A minimal signalling relay for ONE direct-mode visit between two accounts, speaking the
    real envelope in JSON or msgpack: auth, visit.join, visit.signal (relayed to the other
    socket), visit.media (recorded), visit.leave, and GET /api/v1/visits/{id}/ice. No booking,
    no billing, no checks beyond the token: this exists so the client's WebRTC half is tested
    against a real socket; the real server is tested end to end elsewhere."""

    __test__ = False  # not a pytest class

    def __init__(self, turn, visit_id: str, tokens: dict[str, tuple[str, str]]) -> None:
        self.turn = turn
        self.visit_id = visit_id
        self.tokens = tokens  # token -> (account_id, role)
        self.joined: dict[str, Any] = {}  # role -> ws
        self.codecs: dict[Any, str] = {}
        self.media: list[tuple[str, str]] = []  # (role, state) as reported
        self.signals: list[tuple[str, str]] = []  # (role, "offer"|"answer"|"candidate")
        self.app = web.Application()
        self.app.router.add_get("/ws", self.ws)
        self.app.router.add_get("/api/v1/visits/{id}/ice", self.ice)

    async def ice(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens or request.match_info["id"] != self.visit_id:
            return web.json_response({"error": {"code": "forbidden", "message": "no"}}, status=403)
        account_id, _role = self.tokens[token]
        servers = ice_servers(secret=self.turn.secret, turn_urls=[self.turn.url], stun_urls=[],
                              account_id=account_id,
                              expires_at=datetime.now(UTC) + timedelta(minutes=10))
        return web.json_response({"ice_servers": servers})

    async def send(self, ws: web.WebSocketResponse, value: dict[str, Any]) -> None:
        if self.codecs[ws] == "kinwire.v1.json":
            await ws.send_str(json.dumps(value))
        else:
            await ws.send_bytes(msgpack.packb(value))

    async def push(self, role: str, kind: str, data: dict[str, Any]) -> None:
        ws = self.joined.get(role)
        if ws is not None and not ws.closed:
            await self.send(ws, {"type": kind, "data": data})

    async def end(self, reason: str) -> None:
        for role in list(self.joined):
            await self.push(role, "visit.ended", {"visit_id": self.visit_id, "reason": reason})

    async def _left(self, role: str | None, ws: web.WebSocketResponse) -> None:
        if role is not None and self.joined.get(role) is ws:
            del self.joined[role]
            other = "person" if role == "family" else "family"
            await self.push(other, "visit.peer", {"visit_id": self.visit_id, "present": False})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("kinwire.v1.json", "kinwire.v1.msgpack"))
        await ws.prepare(request)
        self.codecs[ws] = ws.ws_protocol or "kinwire.v1.json"
        role: str | None = None
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    command = json.loads(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    command = msgpack.unpackb(msg.data)
                else:
                    continue
                op, args = command["op"], command.get("args", {})
                reply: dict[str, Any] = {}
                if op == "auth":
                    account_id, role = self.tokens[args["token"]]
                    reply = {"account_id": account_id, "role": role}
                elif op == "visit.join":
                    assert role is not None and args["visit_id"] == self.visit_id
                    other = "person" if role == "family" else "family"
                    self.joined[role] = ws
                    reply = {"visit": {"id": self.visit_id}, "role": role,
                             "peer_present": other in self.joined, "media": "direct"}
                    await self.send(ws, {"id": command["id"], "ok": reply})
                    await self.push(other, "visit.peer",
                                    {"visit_id": self.visit_id, "present": True})
                    continue
                elif op == "visit.signal":
                    assert role is not None
                    other = "person" if role == "family" else "family"
                    data = {"visit_id": self.visit_id, "from": role}
                    for key in ("description", "candidate"):
                        if key in args:
                            data[key] = args[key]
                    kind = args["description"]["type"] if "description" in args else "candidate"
                    self.signals.append((role, kind))
                    await self.push(other, "visit.signal", data)
                elif op == "visit.media":
                    assert role is not None
                    self.media.append((role, args["state"]))
                elif op == "visit.leave":
                    await self._left(role, ws)
                await self.send(ws, {"id": command["id"], "ok": reply})
        finally:
            await self._left(role, ws)
            del self.codecs[ws]
        return ws


def _udp_sockets_of_this_process() -> dict[str, tuple[str, str]]:
    """inode -> (local, remote) of every UDP socket this process holds, from /proc (IPv4 and
    IPv6)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = {}
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found[fields[9]] = (_proc_addr(fields[1]), _proc_addr(fields[2]))
    return found


def _proc_addr(value: str) -> str:
    hexaddr, hexport = value.split(":")
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        host = ".".join(str(b) for b in reversed(raw))
    else:
        words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
        host = "[" + b"".join(words).hex() + "]"
    return f"{host}:{int(hexport, 16)}"


def _make_video(path: Path, frames: int = 50) -> None:
    """A 2-second 320x240 MPEG-4 file with a changing picture, for the file camera."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for n in range(frames):
            frame = av.VideoFrame(320, 240, "yuv420p")
            for i, plane in enumerate(frame.planes):
                plane.update(bytes([(n * 5 + i * 60) % 256]) * plane.buffer_size)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _assert_loopback_only(client: VisitClient) -> None:
    assert client.pc is not None
    ice = client.pc.getTransceivers()[0].sender.transport.transport
    local = ice.iceGatherer.getLocalCandidates()
    remote = ice.getRemoteCandidates()
    assert local and all(c.type == "relay" and c.ip == "127.0.0.1" for c in local), local
    assert remote and all(c.ip == "127.0.0.1" for c in remote), remote


async def test_two_visit_clients_see_each_other_through_the_private_turn(tmp_path: Path) -> None:
    visit_id = "vis_test"
    tokens = {"tok-family": ("acc_family", "family"), "tok-person": ("acc_person", "person")}
    async with private_coturn() as turn:
        relay = TestRelay(turn, visit_id, tokens)
        server = TestServer(relay.app, host="127.0.0.1")
        await server.start_server()
        base = str(server.make_url("")).rstrip("/")
        family = VisitClient(base, "tok-family", visit_id, codec="json", loopback_only=True,
                             width=320, height=240)
        person = VisitClient(base, "tok-person", visit_id, codec="msgpack",
                             loopback_only=True, width=320, height=240)
        _make_video(tmp_path / "camera.mp4")
        again = VisitClient(base, "tok-person", visit_id, codec="json", loopback_only=True,
                            camera=str(tmp_path / "camera.mp4"))
        earlier = _udp_sockets_of_this_process()  # whatever other tests left is not ours
        try:
            async with asyncio.timeout(30):
                # The person waits in the visit; the family joins and offers.
                assert (await person.start())["role"] == "person"
                joined = await family.start()
                assert joined["peer_present"] is True and joined["media"] == "direct"
                await family.wait_connected()
                await person.wait_connected()
                for client in (family, person):
                    await client.wait_frames("video", 30)
                    await client.wait_frames("audio", 25)
                    _assert_loopback_only(client)
                # Every UDP socket the two clients opened is connected to the TURN server.
                sockets = [pair for inode, pair in _udp_sockets_of_this_process().items()
                           if inode not in earlier]
                assert len(sockets) == 2 and all(remote == f"127.0.0.1:{turn.port}"
                                                 for _local, remote in sockets), sockets
                assert relay.signals[:2] == [("family", "offer"), ("person", "answer")]
                # The kiosk reports connected on its next look at the media (every 0.5 s):
                # under load that can come after both saw their frames; leaving first would
                # race it.
                await person.wait_for(lambda: ("person", "connected") in relay.media)

                # The person hangs up: the family drops its call and says so.
                await person.leave()
                await family.wait_for(lambda: family.pc is None)
                # The person comes back (msgpack before, JSON and a file camera now): the
                # family offers again.
                before = dict(family.frames)
                await again.start()
                await again.wait_connected()
                await again.wait_frames("video", 20)
                await family.wait_frames("video", before["video"] + 20)  # from the file
                await family.wait_frames("audio", before["audio"] + 10)  # the added tone
                await again.wait_for(lambda: relay.media.count(("person", "connected")) == 2)

                # The server ends the visit: both clients close by themselves.
                await relay.end("time_up")
                await family.wait_for(lambda: family.closed)
                await again.wait_for(lambda: again.closed)
                assert family.ended == again.ended == "time_up"
                assert [k for k, _ in family.events].count("visit.peer") == 2
            assert ("family", "connected") in relay.media
            assert relay.media.count(("person", "connected")) == 2
            assert ("family", "disconnected") in relay.media
        finally:
            for client in (family, person, again):
                await client.close()
            await server.close()
