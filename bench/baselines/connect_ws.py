"""Baseline for the connect scenario: an aiohttp WebSocket server that checks `auth {token}`
against an in-memory map, answers, and answers `sync {since}` with nothing new.

    python -m bench.baselines.connect_ws --port P --tokens tokens.json
"""

from __future__ import annotations

import json

from aiohttp import WSMsgType, web

from bench.baselines import token_ws


async def answer_syncs(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        command = json.loads(msg.data)
        if command.get("op") == "sync":
            since = command.get("args", {}).get("since", 0)
            reply = {"events": [], "more": False, "seq": since}
            await ws.send_str(json.dumps({"id": command["id"], "ok": reply}))


if __name__ == "__main__":
    token_ws.main(answer_syncs)
