"""Baseline for the connect scenario: an aiohttp WebSocket server that checks `auth {token}`
against an in-memory map, answers, and answers `sync {since}` with nothing new.

    python -m bench.baselines.connect_ws --port P --tokens tokens.json
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

from aiohttp import WSMsgType, web


def app(tokens: dict[str, str]) -> web.Application:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("kinwire.v1.json",))
        await ws.prepare(request)
        command = json.loads((await ws.receive()).data)
        account = tokens.get(command.get("args", {}).get("token", ""))
        if account is None:
            await ws.close(code=4001, message=b"bad token")
            return ws
        await ws.send_str(json.dumps({"id": command["id"], "ok": {"account_id": account}}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            command = json.loads(msg.data)
            if command.get("op") == "sync":
                since = command.get("args", {}).get("since", 0)
                reply = {"events": [], "more": False, "seq": since}
                await ws.send_str(json.dumps({"id": command["id"], "ok": reply}))
        return ws

    application = web.Application()
    application.router.add_get("/ws", handler)
    application.router.add_get("/readyz", lambda _: web.Response(text="ok"))
    return application


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web.run_app(app(json.loads(args.tokens.read_text())), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
