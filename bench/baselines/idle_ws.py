"""Baseline for the idle-sockets scenario: an aiohttp WebSocket server that checks
`auth {token}` against an in-memory map, answers, and then only keeps the socket open.

    python -m bench.baselines.idle_ws --port P --tokens tokens.json
"""

from __future__ import annotations

from aiohttp import web

from bench.baselines import token_ws


async def keep_open(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


if __name__ == "__main__":
    token_ws.main(keep_open)
