"""What the connect and idle baselines share: an aiohttp WebSocket server that checks the first
frame `auth {token}` against an in-memory map, answers it, then hands the socket to `serve`."""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

Serve = Callable[[web.WebSocketResponse], Awaitable[None]]


def app(tokens: dict[str, str], serve: Serve) -> web.Application:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("kinwire.v1.json",))
        await ws.prepare(request)
        command = json.loads((await ws.receive()).data)
        account = tokens.get(command.get("args", {}).get("token", ""))
        if account is None:
            await ws.close(code=4001, message=b"bad token")
            return ws
        await ws.send_str(json.dumps({"id": command["id"], "ok": {"account_id": account}}))
        await serve(ws)
        return ws

    application = web.Application()
    application.router.add_get("/ws", handler)
    application.router.add_get("/readyz", lambda _: web.Response(text="ok"))
    return application


def main(serve: Serve) -> None:
    """Parse `--port P --tokens tokens.json` and run until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    args = parser.parse_args()
    # Thousands of idle sockets: the soft descriptor limit (often 1024) would cap the run.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web.run_app(app(json.loads(args.tokens.read_text()), serve), host="127.0.0.1",
                port=args.port, print=None, access_log=None)
