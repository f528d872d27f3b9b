"""Relay baseline: the bare job of relay mode with the same libraries, and nothing else.

An aiohttp WebSocket speaking just enough of Kinwire's protocol for the reference visit client
(auth, visit.join, visit.signal, visit.media, visit.leave; GET /api/v1/visits/{id}/ice) and an
aiortc peer connection per party whose senders read the other party's tracks through a
MediaRelay. No database, no meter, no leases, no outlets, no recording: the difference with
Kinwire is what those cost. A token is "<anything>:family" or "<anything>:person".

    python -m bench.baselines.relay_bare PORT TURN_URL TURN_SECRET
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from signalling.media import rtc_configuration
from signalling.turn import ice_servers


class Forward(MediaStreamTrack):
    """Sends the other party's track of one kind, once it exists."""

    def __init__(self, kind: str, visit: Visit, party: str) -> None:
        super().__init__()
        self.kind = kind
        self.visit, self.party = visit, party
        self.source: MediaStreamTrack | None = None

    async def recv(self) -> Any:
        while self.source is None:
            incoming = self.visit.incoming.get((self.party, self.kind))
            if incoming is not None:
                self.source = self.visit.relay.subscribe(incoming)
                break
            await asyncio.sleep(0.05)
        return await self.source.recv()


class Visit:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.incoming: dict[tuple[str, str], MediaStreamTrack] = {}
        self.pcs: dict[str, RTCPeerConnection] = {}


VISITS: dict[str, Visit] = {}


def config(request: web.Request) -> list[dict[str, Any]]:
    app = request.app
    return ice_servers(secret=app["turn_secret"], turn_urls=[app["turn_url"]], stun_urls=[],
                       account_id="bare", expires_at=int(time.time()) + 3600)


async def ice(request: web.Request) -> web.Response:
    return web.json_response({"ice_servers": config(request)})


async def answer(request: web.Request, visit: Visit, role: str, sdp: str) -> dict[str, Any]:
    other = "person" if role == "family" else "family"
    old = visit.pcs.pop(role, None)
    if old is not None:
        await old.close()
    pc = RTCPeerConnection(rtc_configuration(config(request), loopback_only=True))
    visit.pcs[role] = pc

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        visit.incoming[(role, track.kind)] = track

    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    for transceiver in pc.getTransceivers():
        pc.addTrack(Forward(transceiver.kind, visit, other))
    await pc.setLocalDescription(await pc.createAnswer())
    return {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse(protocols=("kinwire.v1.json",))
    await sock.prepare(request)
    role, visit_id = "family", ""
    async for msg in sock:
        if msg.type != WSMsgType.TEXT:
            continue
        frame = json.loads(msg.data)
        op, args, ok = frame.get("op"), frame.get("args") or {}, {}
        if op == "auth":
            role = str(args.get("token", "")).rsplit(":", 1)[-1]
            ok = {"account_id": role}
        elif op == "visit.join":
            visit_id = args["visit_id"]
            VISITS.setdefault(visit_id, Visit())
            ok = {"visit": {"id": visit_id}, "role": role, "peer_present": False,
                  "media": "relay"}
        elif op == "visit.signal" and "description" in args:
            description = await answer(request, VISITS[visit_id], role,
                                       args["description"]["sdp"])
            await sock.send_str(json.dumps({"id": frame["id"], "ok": {}}))
            await sock.send_str(json.dumps({"type": "visit.signal", "data": {
                "visit_id": visit_id, "from": "server", "description": description}}))
            continue
        elif op == "visit.leave":
            visit = VISITS.pop(visit_id, None)
            if visit is not None:
                await asyncio.gather(*(pc.close() for pc in visit.pcs.values()))
        await sock.send_str(json.dumps({"id": frame["id"], "ok": ok}))
    return sock


def main() -> None:
    port, turn_url, turn_secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = web.Application()
    app["turn_url"], app["turn_secret"] = turn_url, turn_secret
    app.router.add_get("/ws", ws)
    app.router.add_get("/api/v1/visits/{visit_id}/ice", ice)
    app.router.add_get("/readyz", lambda _r: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
