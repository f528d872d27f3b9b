"""Baseline for the fan-out scenario: the bare relay, with Kinwire's libraries.

An aiohttp WebSocket server that checks `auth {token}` against an in-memory map, subscribes the
user's broker channel (the same `kinwire:channel:user:<id>` names, on one redis.asyncio pub/sub
connection for the whole process) and forwards each payload's `live` frame, decoded from msgpack
and re-encoded as JSON, to that user's socket. No store, no per-user feed, no send queue: the
least a server can do to move a published frame to a socket.

    python -m bench.baselines.fanout_relay --port P --tokens tokens.json --redis-port R
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
from pathlib import Path

import msgpack
from aiohttp import web
from redis.asyncio import Redis

PREFIX = "kinwire:channel:user:"


def app(tokens: dict[str, str], redis_port: int) -> web.Application:
    sockets: dict[bytes, web.WebSocketResponse] = {}
    redis = Redis(port=redis_port)
    pubsub = redis.pubsub()

    async def relay() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            ws = sockets.get(message["channel"])
            if ws is None:
                continue
            frame = msgpack.unpackb(message["data"], raw=False).get("live")
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(frame, separators=(",", ":")))

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("kinwire.v1.json",))
        await ws.prepare(request)
        first = await ws.receive()
        command = json.loads(first.data)
        account = tokens.get(command.get("args", {}).get("token", ""))
        if account is None:
            await ws.close(code=4001, message=b"bad token")
            return ws
        channel = (PREFIX + account).encode()
        sockets[channel] = ws
        await pubsub.subscribe(channel)
        await ws.send_str(json.dumps({"id": command["id"], "ok": {"account_id": account}}))
        try:
            async for _ in ws:
                pass
        finally:
            sockets.pop(channel, None)
            with contextlib.suppress(ConnectionError):
                await pubsub.unsubscribe(channel)
        return ws

    async def start(_: web.Application) -> None:
        await pubsub.subscribe("bench:keepalive")  # listen() ends when nothing is subscribed
        application["relay"] = asyncio.create_task(relay())

    async def stop(_: web.Application) -> None:
        application["relay"].cancel()
        await redis.aclose()

    application = web.Application()
    application.router.add_get("/ws", handler)
    application.router.add_get("/readyz", lambda _: web.Response(text="ok"))
    application.on_startup.append(start)
    application.on_cleanup.append(stop)
    return application


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tokens = json.loads(args.tokens.read_text())
    web.run_app(app(tokens, args.redis_port), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
