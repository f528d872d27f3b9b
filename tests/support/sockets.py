"""A WebSocket test client that speaks Kinwire's envelope in either codec (docs/API.md)."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgpack
from aiohttp.test_utils import TestClient

from tests.support.helpers import Who

JSON, MSGPACK = "kinwire.v1.json", "kinwire.v1.msgpack"


class Sock:
    """A test client socket that speaks the envelope in either codec."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, codec: str) -> None:
        self.ws, self.codec, self.next_id = ws, codec, 1
        self.pushes: list[dict[str, Any]] = []

    async def send_raw(self, value: Any) -> None:
        if self.codec == JSON:
            import json

            await self.ws.send_str(json.dumps(value))
        else:
            await self.ws.send_bytes(msgpack.packb(value))

    async def frame(self, timeout: float = 5) -> dict[str, Any] | None:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            import json

            return json.loads(msg.data)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msgpack.unpackb(msg.data)
        return None  # closed

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        command_id = self.next_id
        self.next_id += 1
        await self.send_raw({"id": command_id, "op": op, "args": args})
        while True:
            frame = await self.frame()
            assert frame is not None, f"socket closed: {self.ws.close_code}"
            if frame.get("id") == command_id:
                return frame
            self.pushes.append(frame)

    async def push(self, timeout: float = 5) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.pop(0)
        frame = await self.frame(timeout)
        assert frame is not None, f"socket closed: {self.ws.close_code}"
        return frame

    async def closed_with(self, timeout: float = 5) -> int | None:
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code


async def open_socket(client: TestClient, who: Who | None = None, codec: str = JSON,
                      **kwargs: Any) -> Sock:
    if who is not None:
        client.session.cookie_jar.clear()  # be exactly `who`, by token
    ws = await client.ws_connect("/ws", protocols=(codec,), **kwargs)
    sock = Sock(ws, codec)
    if who is not None:
        device = {"device_token": who.device} if who.device else {}  # a kiosk's session
        reply = await sock.call("auth", token=who.token, **device)
        assert "ok" in reply, reply
    return sock
