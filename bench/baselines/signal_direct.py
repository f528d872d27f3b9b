"""Baseline for the signalling scenario: a bare in-process relay between paired sockets.

One aiohttp process. It speaks just enough of Kinwire's JSON envelope for the same load
generator to drive it: `auth {token}` (the token is taken as the account id, no lookup),
`visit.join {visit_id}` (pairs the socket with the visit's other socket) and `visit.signal
{visit_id, ...}` (the frame goes to the peer as a `visit.signal` push, the sender gets
`{relayed}`). No store, no broker, no checks: what is left is the WebSocket and JSON cost of
relaying a signal, which is what Kinwire's signalling adds to.

    python -m bench.baselines.signal_direct --port 8100
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

PROTOCOL = "kinwire.v1.json"


async def ready(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), heartbeat=None, max_msg_size=0)
    await ws.prepare(request)
    visits: dict[str, dict[str, web.WebSocketResponse]] = request.app["visits"]
    me, joined = "", []
    try:
        async for msg in ws:
            if msg.type != web.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            op, args = frame.get("op"), frame.get("args") or {}
            if op == "auth":
                me = str(args.get("token", ""))
                ok = {"account_id": me}
            elif op == "visit.join":
                visit = visits.setdefault(args["visit_id"], {})
                visit[me] = ws
                joined.append(args["visit_id"])
                ok = {"peer_present": len(visit) > 1}
            elif op == "visit.signal":
                peers = [w for who, w in visits.get(args["visit_id"], {}).items() if who != me]
                push = {"type": "visit.signal", "data": {**args, "from": me}}
                for peer in peers:
                    await peer.send_str(json.dumps(push))
                ok = {"relayed": bool(peers)}
            else:
                ok = {}
            await ws.send_str(json.dumps({"id": frame.get("id"), "ok": ok}))
    finally:
        for visit_id in joined:
            visits.get(visit_id, {}).pop(me, None)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app["visits"] = {}
    app.router.add_get("/readyz", ready)
    app.router.add_get("/ws", socket)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
