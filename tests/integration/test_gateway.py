"""The WebSocket gateway at /ws, through real sockets (aiohttp's client) on both databases."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient

from server import events
from server.gateway.endpoint import HUB
from tests.conftest import app_client
from tests.support.helpers import Api, Who
from tests.support.sockets import JSON, MSGPACK, open_socket


async def emit(api: Api, who: Who, kind: str, data: dict[str, Any]) -> int:
    ctx = api.ctx
    outbox = events.Outbox()
    async with ctx.store.write() as conn:
        seq = await outbox.emit(conn, who.id, kind, data, ctx.clock())
    await outbox.signal(ctx.broker)
    return seq


async def test_auth_ping_and_both_codecs(api: Api, client: TestClient) -> None:
    fam = await api.family()
    for codec in (JSON, MSGPACK):
        sock = await open_socket(client, fam, codec)
        assert sock.ws.protocol == codec
        reply = await sock.call("ping")
        assert reply["ok"]["pong"] is True
        await sock.ws.close()


async def test_a_command_before_auth_closes_4001(api: Api, client: TestClient) -> None:
    sock = await open_socket(client)
    await sock.send_raw({"id": 1, "op": "ping", "args": {}})
    assert (await sock.frame())["error"]["code"] == "unauthorized"
    assert await sock.closed_with() == 4001
    bad = await open_socket(client)
    await bad.send_raw({"id": 1, "op": "auth", "args": {"token": "nope"}})
    assert (await bad.frame())["error"]["code"] == "unauthorized"
    assert await bad.closed_with() == 4001


async def test_silence_before_auth_closes_4001(db_url: str, tmp_path) -> None:
    async with app_client(db_url, tmp_path, ws_auth_timeout_s=0.3) as client:
        sock = await open_socket(client)
        assert await sock.closed_with() == 4001


async def test_cookie_authenticates_the_upgrade(api: Api, client: TestClient) -> None:
    await api.family()  # logging in set the kw_session cookie on this client
    sock = await open_socket(client)
    assert "ok" in await sock.call("ping")


async def test_bad_frames_get_errors_and_the_socket_lives(api: Api, client: TestClient) -> None:
    fam = await api.family()
    sock = await open_socket(client, fam)
    await sock.ws.send_str("{not json")
    assert (await sock.frame())["error"]["code"] == "bad_frame"
    await sock.send_raw({"id": 5, "op": "no.such.op"})
    assert (await sock.frame())["error"]["code"] == "unknown_op"
    await sock.send_raw([1, 2, 3])
    assert (await sock.frame())["error"]["code"] == "bad_frame"
    await sock.ws.send_bytes(b"\x93\x01")  # binary on a JSON socket
    assert (await sock.frame())["error"]["code"] == "bad_frame"
    assert "ok" in await sock.call("ping")


async def test_a_frame_over_the_limit_closes_1009(api: Api, client: TestClient) -> None:
    fam = await api.family()
    sock = await open_socket(client, fam)
    await sock.ws.send_str("x" * (api.ctx.settings.ws_frame_bytes_max + 10))
    assert await sock.closed_with() == 1009


async def test_commands_over_the_rate_are_refused(api: Api, client: TestClient) -> None:
    fam = await api.family()
    sock = await open_socket(client, fam)
    burst = api.ctx.settings.ws_commands_per_s * 2 + 20
    for i in range(burst):
        await sock.send_raw({"id": i + 1, "op": "ping", "args": {}})
    frames = [await sock.frame() for _ in range(burst)]
    limited = [f for f in frames if f.get("error", {}).get("code") == "rate_limited"]
    assert 10 <= len(limited) < burst
    await asyncio.sleep(0.3)
    assert "ok" in await sock.call("ping")


async def test_connections_per_user_are_limited(db_url: str, tmp_path) -> None:
    async with app_client(db_url, tmp_path, ws_connections_per_user_max=2) as client:
        api = Api(client)
        fam = await api.family()
        client.session.cookie_jar.clear()  # authenticate by command, as a kiosk would
        keep = [await open_socket(client, fam) for _ in range(2)]
        extra = await open_socket(client)
        await extra.send_raw({"id": 1, "op": "auth", "args": {"token": fam.token}})
        assert (await extra.frame())["error"]["code"] == "too_many_connections"
        assert await extra.closed_with() == 4029
        assert "ok" in await keep[0].call("ping")


async def test_a_foreign_origin_is_refused(api: Api, client: TestClient) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    # The same refusal as plain HTTP: the error body and the request's id, which the socket's
    # handler adds itself (the middlewares pass /ws through without awaiting it).
    resp = await client.get("/ws", headers={"Origin": "https://evil.example",
                                            "X-Request-Id": "req-ws-1"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden_origin"
    assert resp.headers["X-Request-Id"] == "req-ws-1"


async def test_a_plain_get_of_the_socket_path_is_a_json_400(api: Api, client: TestClient) -> None:
    resp = await client.get("/ws")
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"
    assert resp.headers["X-Request-Id"]


async def test_logout_closes_the_sessions_sockets_4009(api: Api, client: TestClient) -> None:
    fam = await api.family()
    sock = await open_socket(client, fam)
    r = await api.call("POST", "/auth/logout", fam)
    assert r.status == 200
    assert await sock.closed_with() == 4009


async def test_events_are_pushed_in_order_and_sync_returns_them(api: Api,
                                                                client: TestClient) -> None:
    fam = await api.family()
    a = await open_socket(client, fam, JSON)
    b = await open_socket(client, fam, MSGPACK)
    seqs = [await emit(api, fam, "balance", {"balance": n}) for n in range(1, 6)]
    for sock in (a, b):
        got = [await sock.push() for _ in seqs]
        assert [f["seq"] for f in got] == seqs
        assert [f["data"]["balance"] for f in got] == [1, 2, 3, 4, 5]
    synced = await a.call("sync", since=seqs[1])
    assert [e["seq"] for e in synced["ok"]["events"]] == seqs[2:]
    assert synced["ok"]["more"] is False
    assert (await a.call("sync", since=10_000))["ok"]["reset"] is True


async def test_sync_after_pruning_says_reset(api: Api, client: TestClient) -> None:
    from datetime import timedelta

    fam = await api.family()
    sock = await open_socket(client, fam)
    first = await emit(api, fam, "balance", {"balance": 1})
    await sock.push()
    async with api.ctx.store.write() as conn:
        assert await events.prune(conn, api.ctx.clock() + timedelta(seconds=1)) == 1
    assert (await sock.call("sync", since=first - 1))["ok"]["reset"] is True
    assert (await sock.call("sync", since=first))["ok"]["events"] == []


async def raw_upgrade(client: TestClient, token: str) -> tuple[asyncio.StreamReader,
                                                                asyncio.StreamWriter]:
    """A bare TCP WebSocket upgrade that then neither reads nor answers pings."""
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n"
                  f"Cookie: kw_session={token}\r\n\r\n").encode())
    await writer.drain()
    assert b"101" in await reader.readline()
    return reader, writer


async def test_a_slow_reader_is_closed_4008_and_memory_stays_bounded(
        api: Api, client: TestClient) -> None:
    fam = await api.family()
    # A raw socket that upgrades and then never reads: the server's writes back up.
    _, writer = await raw_upgrade(client, fam.token)
    hub = client.app[HUB]
    for _ in range(100):
        if fam.id in hub.feeds and hub.feeds[fam.id].clients:  # attached, not just subscribed
            break
        await asyncio.sleep(0.02)
    feed = hub.feeds[fam.id]
    (slow,) = feed.clients
    frame = {"type": "typing", "data": {"pad": "x" * 4096}}
    for _ in range(20_000):
        feed.fan_out(frame)
        if slow.closing:
            break
        await asyncio.sleep(0)
    assert slow.closing, "the slow socket was never closed"
    assert slow.backlog <= api.ctx.settings.ws_send_queue_max
    writer.close()


async def test_typing_reaches_the_contact_live(api: Api, client: TestClient) -> None:
    admin = await api.admin()
    facility = await api.facility(admin)
    staff = await api.staff(admin, facility)
    person = await api.person(staff, facility)
    fam = await api.family()
    p_sock = await open_socket(client, person, MSGPACK)
    f_sock = await open_socket(client, fam)
    assert (await f_sock.call("typing", to=person.id))["error"]["code"] == "not_connected"
    await api.connect(fam, person)
    assert (await f_sock.call("typing", to=person.id))["ok"]["delivered"] is True
    pushed = await p_sock.push()
    assert pushed == {"type": "typing", "data": {"from": fam.id}}
    assert "seq" not in pushed


async def test_sockets_close_when_their_session_expires(db_url: str, tmp_path) -> None:
    from datetime import timedelta

    from server.schema import utcnow

    offset = timedelta(0)
    async with app_client(db_url, tmp_path, clock=lambda: utcnow() + offset,
                          session_ttl_s=3600) as client:
        api = Api(client)
        fam = await api.family()
        sock = await open_socket(client, fam)
        hub = client.app[HUB]
        assert hub.close_expired(utcnow()) == 0
        assert "ok" in await sock.call("ping")
        assert hub.close_expired(utcnow() + timedelta(hours=2)) == 1
        assert await sock.closed_with() == 4009


async def test_invalid_msgpack_and_wrong_types_get_errors(api: Api, client: TestClient) -> None:
    fam = await api.family()
    sock = await open_socket(client, fam, MSGPACK)
    for junk in (b"\xc1", b"\x92\x01", b"\xdd\xff\xff\xff\xff", msgpack.packb({"id": "x" * 100})):
        await sock.ws.send_bytes(junk)
        assert (await sock.frame())["error"]["code"] == "bad_frame"
    await sock.send_raw({"id": 3, "op": "sync", "args": {"since": "zero"}})
    assert (await sock.frame())["error"]["code"] == "invalid_input"
    await sock.send_raw({"id": 4, "op": "typing", "args": []})
    assert (await sock.frame())["error"]["code"] == "bad_frame"
    other = await api.family("Other")
    other_sock = await open_socket(client, other, JSON)
    assert "ok" in await other_sock.call("ping"), "others are unaffected"
    assert "ok" in await sock.call("ping")


async def test_a_peer_that_ignores_pings_is_dropped(db_url: str, tmp_path) -> None:
    async with app_client(db_url, tmp_path, ws_heartbeat_s=0.2) as client:
        fam = await Api(client).family()
        _, writer = await raw_upgrade(client, fam.token)
        hub = client.app[HUB]
        for _ in range(100):
            if fam.id in hub.feeds:
                break
            await asyncio.sleep(0.02)
        assert fam.id in hub.feeds
        for _ in range(150):  # ~3 s: the server pings every 0.2 s and waits 0.1 s for a pong
            if fam.id not in hub.feeds:
                break
            await asyncio.sleep(0.02)
        assert fam.id not in hub.feeds, "the silent peer was not dropped"
        writer.close()
