"""Hostile WebSocket frames, in both codecs, drawn by hypothesis.

Random envelopes, wrong types, deep nesting, frames at and over the size limit, unknown ops,
random bytes, the wrong codec, and every real op with garbage arguments. For each frame:
the server answers promptly with a well-formed reply (an error with a stable code, or `ok`),
or closes with a defined code (1009 for an oversized frame); a ping on the same socket still
answers; nothing is logged at ERROR (a handler that blew up); and another user, connected the
whole time, keeps receiving live pushes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import events
from server.gateway.ops import HANDLERS
from tests.conftest import app_client
from tests.support.helpers import Api, Who, decode_frame

JSON, MSGPACK = "kinwire.v1.json", "kinwire.v1.msgpack"
FRAME_BYTES_MAX = 16 * 1024  # the app's limit in this test: oversize frames stay cheap
REPLY_WAIT_S = 3.0
CLOSE_CODES = {1009}  # the only close a single frame may cause (too large)
ARG_NAMES = ["visit_id", "to", "since", "token", "message_id", "body", "key", "state",
             "description", "candidate", "photo_ids", "cod", "sdp", "type"]


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Sock:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, codec: str) -> None:
        self.ws, self.codec = ws, codec

    async def send(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            await self.ws.send_str(payload)
        else:
            await self.ws.send_bytes(payload)

    async def next_reply(self, timeout: float = REPLY_WAIT_S) -> dict[str, Any] | None:
        """The next frame that answers a command (pushes skipped); None if the socket closed.
        Raises TimeoutError when nothing came back: a stuck socket."""
        async with asyncio.timeout(timeout):
            while True:
                frame = decode_frame(await self.ws.receive())
                if frame is None or "id" in frame:
                    return frame

    async def ping(self, command_id: int) -> dict[str, Any] | None:
        frame = {"id": command_id, "op": "ping", "args": {}}
        await self.send(json.dumps(frame) if self.codec == JSON else msgpack.packb(frame))
        return await self.next_reply()


@dataclass
class Rig:
    client: TestClient
    api: Api
    fuzzer: Who
    contact: Who
    observer: Who
    observer_sock: Sock
    errors: ErrorLog
    socks: dict[str, Sock] = field(default_factory=dict)
    closes: list[int | None] = field(default_factory=list)

    async def sock(self, codec: str) -> Sock:
        sock = self.socks.get(codec)
        if sock is None or sock.ws.closed:
            sock = await open_socket(self.client, self.fuzzer, codec)
            self.socks[codec] = sock
        return sock


async def open_socket(client: TestClient, who: Who, codec: str) -> Sock:
    client.session.cookie_jar.clear()
    sock = Sock(await client.ws_connect("/ws", protocols=(codec,)), codec)
    frame = {"id": 0, "op": "auth", "args": {"token": who.token,
                                             **({"device_token": who.device} if who.device
                                                else {})}}
    await sock.send(json.dumps(frame) if codec == JSON else msgpack.packb(frame))
    reply = await sock.next_reply()
    assert reply is not None and "ok" in reply, reply
    return sock


@pytest.fixture
async def rig(db_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)  # the app, aiohttp and asyncio alike
    try:
        # A high command rate, so that frames reach the ops instead of the rate limiter
        # (tests/integration/test_gateway.py covers the limiter).
        async with app_client(db_url, tmp_path, ws_frame_bytes_max=FRAME_BYTES_MAX,
                              ws_commands_per_s=10_000) as client:
            api = Api(client)
            admin = await api.admin()
            facility = await api.facility(admin)
            staff = await api.staff(admin, facility)
            contact = await api.person(staff, facility)
            fuzzer = await api.family("Fuzzer")
            await api.connect(fuzzer, contact)
            assert (await api.buy(fuzzer, 500)).status == 201
            observer = await api.family("Observer")
            observer_sock = await open_socket(client, observer, MSGPACK)
            yield Rig(client, api, fuzzer, contact, observer, observer_sock, errors)
    finally:
        logging.getLogger().removeHandler(errors)


def scalars(codec: str) -> st.SearchStrategy:
    # msgpack carries 64-bit integers and raw bytes; JSON any integer, NaN and infinities.
    ints = (st.integers(-(2**63), 2**64 - 1) if codec == MSGPACK else
            st.integers() | st.sampled_from([2**64, 10**40, -(10**40)]))
    extra = st.binary(max_size=20) if codec == MSGPACK else st.floats()
    return (st.none() | st.booleans() | ints | st.floats(allow_nan=False) | extra
            | st.text(max_size=30) | st.sampled_from(["", "\x00", "vis_x", "msg_x", "-1"]))


def values(codec: str) -> st.SearchStrategy:
    return st.recursive(
        scalars(codec),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(ARG_NAMES) | st.text(max_size=8), inner, max_size=4),
        max_leaves=10)


def mostly(plausible: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """Three times in four the plausible strategy (one_of alone would shrink towards it but
    draw the two evenly)."""
    return st.integers(0, 3).flatmap(lambda n: other if n == 0 else plausible)


def op_args(codec: str, contact_id: str) -> st.SearchStrategy[dict]:
    """Arguments with each op's own names, mostly plausible, sometimes any value at all: so
    that the fuzz gets past the envelope into the ops, the services and the database."""
    v = values(codec)
    ident = mostly(st.sampled_from([contact_id, "vis_0", "msg_0", "con_0"]), v)
    text = mostly(st.text(min_size=1, max_size=40), v)
    fields = {
        "to": ident, "visit_id": ident, "message_id": ident, "token": text, "key": text,
        "body": text, "since": mostly(st.integers(-5, 2**63), v),
        "state": mostly(st.sampled_from(["connected", "disconnected"]), v),
        "photo_ids": mostly(st.lists(ident, max_size=6), v), "cod": v,
        "description": mostly(st.fixed_dictionaries(
            {"type": st.sampled_from(["offer", "answer", "pranswer"]),
             "sdp": st.sampled_from(["v=0\r\n", "x", ""]) | v}), v),
        "candidate": mostly(st.fixed_dictionaries(
            {"candidate": st.sampled_from(["candidate:1 1 udp 1 192.0.2.1 9 typ host", ""])
             | v, "sdpMid": v, "sdpMLineIndex": st.integers(-2, 70) | v}), v)}
    return st.fixed_dictionaries({}, optional=fields)


def envelopes(codec: str, contact_id: str) -> st.SearchStrategy[dict]:
    real_ops = st.sampled_from(sorted(HANDLERS))
    ops = mostly(real_ops, st.text(max_size=70) | values(codec))
    ids = mostly(st.integers(0, 2**53 - 1) | st.text(min_size=1, max_size=64),
                 values(codec) | st.sampled_from([2**53, -1, True, "x" * 65]))
    plausible = st.fixed_dictionaries({"id": mostly(st.integers(1, 2**53 - 1), ids), "op": ops,
                                       "args": mostly(op_args(codec, contact_id),
                                                      values(codec))})
    anything = st.dictionaries(st.sampled_from(["id", "op", "args"]) | st.text(max_size=5),
                               ids | ops | values(codec), max_size=4)
    return mostly(plausible, anything)


def encode(codec: str, value: Any) -> str | bytes:
    if codec == JSON:
        return json.dumps(value, default=repr)  # NaN and Infinity go out as JSON allows
    return msgpack.packb(value, use_bin_type=True)


@st.composite
def frames(draw: st.DrawFn, codec: str, contact_id: str) -> str | bytes:
    kind = draw(st.sampled_from(["envelope"] * 14 + ["deep", "huge", "bytes", "text",
                                                    "wrong_codec", "non_str_keys"]))
    if kind == "envelope":
        return encode(codec, draw(envelopes(codec, contact_id)))
    if kind == "deep":
        depth = draw(st.sampled_from([100, 900, 1100, 5000, FRAME_BYTES_MAX // 2 - 20]))
        if codec == JSON:
            inner = "[" * depth + "]" * depth
            return '{"id":1,"op":"message.send","args":{"body":' + inner + "}}"
        return (msgpack.packb({"id": 1, "op": "ping"})[:-1] + b"\xa4args"
                + b"\x81\xa1a" * depth + b"\xc0")
    if kind == "huge":
        size = draw(st.sampled_from([FRAME_BYTES_MAX - 200, FRAME_BYTES_MAX + 1,
                                     FRAME_BYTES_MAX * 3]))
        return encode(codec, {"id": 1, "op": "message.send",
                              "args": {"body": "x" * size, "to": "y", "key": "k"}})
    if kind == "bytes":
        data = draw(st.binary(max_size=200))
        return data if codec == MSGPACK else data.decode("latin-1")
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "non_str_keys" and codec == MSGPACK:
        return msgpack.packb({1: 2, "id": 1, "op": "ping", "args": {3: 4}})
    # The other codec's frame type on this socket.
    frame = {"id": 1, "op": "ping", "args": {}}
    return msgpack.packb(frame) if codec == JSON else json.dumps(frame)


async def observer_still_served(rig: Rig, n: int) -> None:
    """A live push to the bystander arrives while the fuzz goes on."""
    ctx = rig.api.ctx
    outbox = events.Outbox()
    async with ctx.store.write() as conn:
        seq = await outbox.emit(conn, rig.observer.id, "balance", {"n": n}, ctx.clock())
    await outbox.signal(ctx.broker)
    async with asyncio.timeout(REPLY_WAIT_S):
        while True:
            msg = await rig.observer_sock.ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY, f"observer socket: {msg}"
            frame = msgpack.unpackb(msg.data)
            if frame.get("seq") == seq:
                assert frame["data"] == {"n": n}
                return


_examples = iter(range(10**9))


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_hostile_frames_get_answers_and_hurt_nobody(rig: Rig, data: st.DataObject) -> None:
    n = next(_examples)
    rig.errors.records.clear()  # each example answers for its own frame
    codec = data.draw(st.sampled_from([JSON, MSGPACK]), label="codec")
    payload = data.draw(frames(codec, rig.contact.id), label="frame")
    sock = await rig.sock(codec)
    await sock.send(payload)
    try:
        reply = await sock.next_reply()
    except TimeoutError:
        pytest.fail(f"no reply and no close within {REPLY_WAIT_S} s: {payload[:200]!r}")
    if reply is None:
        assert sock.ws.close_code in CLOSE_CODES, (sock.ws.close_code, payload[:200])
        assert len(payload) > FRAME_BYTES_MAX, f"closed on a small frame: {payload[:200]!r}"
        rig.closes.append(sock.ws.close_code)
    else:
        assert set(reply) <= {"id", "ok", "error"} and ("ok" in reply) != ("error" in reply)
        if "error" in reply:
            error = reply["error"]
            assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
            assert error["code"] != "internal_error", (payload[:300], reply)
        pong = await sock.ping(10**6 + n)
        assert pong is not None and pong.get("ok", {}).get("pong") is True, pong
    assert not rig.errors.records, [r.getMessage() for r in rig.errors.records]
    if n % 5 == 0:
        await observer_still_served(rig, n)
