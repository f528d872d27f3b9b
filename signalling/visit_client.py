"""The reference visit client: one party of a video visit, in Python on aiortc.

    async with VisitClient(base_url, token, visit_id, loopback_only=True) as client:
        async with asyncio.timeout(20):
            await client.wait_frames("video", 50)
        print(client.frames)          # {"video": n, "audio": m}, frames received per track kind
    # leaving the block sends visit.leave and closes; or call `start()`, then `leave()`/`close()`

What it does, in order (API.md, "WebSocket /ws"; the server side follows the same rules):
1. Opens /ws with subprotocol `kinwire.v1.json` or `kinwire.v1.msgpack`, sends `auth {token}`
   (with `device_token` for a kiosk session, which answers only with its device's token).
2. Sends `visit.join {visit_id}`. The reply is `{visit, role: family|person, peer_present,
   media: direct|relay}`. Then GET /api/v1/visits/{id}/ice gives the `ice_servers`.
3. Who offers: in `direct` mode the FAMILY side offers whenever the peer is present and it has no
   peer connection (on the join reply, or on a `visit.peer {present: true}` push); the person
   answers. In `relay` mode the server answers both parties: the client offers right after joining.
4. Offer/answer go out as `visit.signal {visit_id, description: {type, sdp}}`. aiortc gathers all
   its candidates into the SDP before it is sent, so the client sends no trickle candidates, but it
   accepts `visit.signal {candidate: {candidate, sdpMid, sdpMLineIndex}}` pushes from the other
   side (a browser trickles) and adds them to its peer connection.
5. It reports `visit.media {visit_id, state: connected|disconnected}` as its peer connection's
   state changes. The person's side (the kiosk: the authority in direct mode, docs/visits.md
   "Trust") reports `connected` only while its peer connection is connected AND frames from the
   family keep arriving (its video frames, or audio without video, within the join reply's
   `media_gap_s`; a stop is reported with `stalled_s`), and adds `sending`: whether every one
   of its own senders' packet counts advanced within the join reply's `media_stall_s` (both
   looked at every WATCH_S). It counts
   received frames per track kind, and surfaces the pushes `visit.live`,
   `visit.tick`, `visit.warning`, `visit.ended` (in `events`, and to `on_event` if given).
   `visit.ended` ends the client. `leave()` sends `visit.leave` and closes everything.
6. If the socket drops (its server process died or restarted), it reconnects to the same URL
   (another process behind it, or the restarted one) every RECONNECT_PAUSE_S for up to
   `reconnect_s`, authenticates, joins the visit again and starts a new session: the family
   (direct mode) or each party (relay mode) offers afresh, the person answers the new offer
   (aiortc has no in-place ICE restart, so a new peer connection carries the restart). A
   rejoined party reports its media again. It gives up, and closes, when the visit is over
   or the time runs out.
7. Relay mode: the server's answer names the relay that made it (`visit.signal {from: "server",
   relay}`). A `visit.relay_moved {visit_id, relay}` push naming another relay (the one relaying
   the visit died or is draining; docs/visits.md "Relay failover") makes it drop its session and
   offer at once, without waiting for ICE to notice that the old relay is gone (~30 s).

8. Relay mode on Janus (the join reply carries `janus` credentials): it offers nothing to
   Kinwire; it publishes into the visit's Janus room and subscribes to the other party there
   (signalling/janus_party.py). When its Janus server stops answering, or a `visit.media_lost`
   push says Kinwire saw it die, it sends `visit.join` again, every RECONNECT_PAUSE_S until the
   reply names a live room, and starts there (`janus_moves` counts the moves). A lost socket
   alone leaves its Janus media as it is.

`loopback_only=True` (tests, benchmarks on one machine) forces ICE relay-only policy and insists
that every ICE server is on a loopback address: then no host candidate is gathered at all and the
only sockets the client opens are connected to the TURN server on 127.0.0.1 (docs/turn.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import msgpack
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from signalling.forwarding import recover_quickly
from signalling.janus import JanusError, JanusUnavailable
from signalling.janus_party import JanusParty
from signalling.media import (
    SyntheticVideoTrack,
    ToneAudioTrack,
    rtc_configuration,
)

log = logging.getLogger("kinwire.visit_client")

REPLY_TIMEOUT_S = 10.0
JSON = "kinwire.v1.json"
MSGPACK = "kinwire.v1.msgpack"
WATCH_S = 0.5  # how often the person's side looks at its media (direct mode)
RECONNECT_PAUSE_S = 0.5  # between attempts to reach the service again
# The offering side offers again when its session has not connected within this: two offers
# crossed (both parties rejoining at once), and the first answer met the second offer.
CONNECT_WAIT_S = 10.0
FRESH_OFFER_S = 2.0  # see VisitClient._offer_fresh
SURFACED = ("visit.live", "visit.tick", "visit.warning", "visit.ended", "visit.peer",
            "visit.updated", "visit.relay_moved", "visit.media_lost")
FINAL = ("visit_over", "not_found", "forbidden")  # a join refused for good


class VisitError(Exception):
    """The server answered a command with an error, or the visit could not be joined."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


# --- the client ------------------------------------------------------------------------------

class VisitClient:
    """One party of a visit. See the module docstring for the protocol.

    Public state: `role`, `media` ("direct"|"relay"), `visit` (the join reply's visit),
    `peer_present`, `connection_state` (the current peer connection's), `frames` (received frames
    per track kind, over all of the visit's peer connections), `events` (surfaced pushes as
    `(type, data)`, in order), `ended` (the `visit.ended` reason, or None), `closed`, `pc` (the
    current RTCPeerConnection, or None), `ice_servers`.
    """

    def __init__(self, base_url: str, token: str, visit_id: str, *, codec: str = "json",
                 camera: str = "synthetic", loopback_only: bool = False,
                 width: int = 640, height: int = 480, fps: int = 30,
                 on_event: Callable[[str, dict[str, Any]], Any] | None = None,
                 tracks: Callable[[], list[MediaStreamTrack]] | None = None,
                 reconnect_s: float = 60.0, device_token: str | None = None) -> None:
        if codec not in ("json", "msgpack"):
            raise ValueError("codec is 'json' or 'msgpack'")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.device_token = device_token  # a kiosk session's: its device's token, on every call
        self.visit_id = visit_id
        self.codec = codec
        self.camera = camera
        self.make_tracks = tracks  # overrides `camera`: fresh local tracks for each connection
        self.loopback_only = loopback_only
        self.size = (width, height, fps)
        self.on_event = on_event
        self.reconnect_s = reconnect_s  # 0: no reconnecting, the client closes with its socket
        self.reconnects = 0  # how many times it came back after losing its socket
        self.relay: str | None = None  # relay mode: the server relay that answered us last
        self.relay_moves = 0  # relay mode: offers made because the relay moved
        self._moved_to: str | None = None
        self.janus: JanusParty | None = None  # relay mode on Janus: our party in the room
        self.janus_creds: dict[str, Any] | None = None  # the join reply's `janus`
        self.janus_moves = 0  # relay mode on Janus: parties started on another server
        self._told_lost: JanusParty | None = None
        self.role: str | None = None
        self.media: str | None = None
        self.visit: dict[str, Any] | None = None
        self.peer_present = False
        self.ice_servers: list[dict[str, Any]] = []
        self.pc: RTCPeerConnection | None = None
        self.connection_state = "new"
        self.frames: dict[str, int] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._local: list[MediaStreamTrack] = []
        self._reported: tuple[str, bool | None] | None = None  # the last visit.media sent
        self.stall_s = 10.0  # the join reply's media_stall_s
        self.gap_s = 2.0  # the join reply's media_gap_s: the family's media stopped, an outage
        self.still_s: float | None = None  # how long ago the family's media last moved
        self._moved: dict[str, tuple[int, float]] = {}  # counter -> (value, when it moved)
        self._pending_candidates: list[dict[str, Any]] = []
        self._offered_at = 0.0  # loop time of our last offer
        self._changed = asyncio.Condition()
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

    # -- lifecycle

    async def __aenter__(self) -> VisitClient:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    async def start(self) -> dict[str, Any]:
        """Connect, authenticate, join, fetch the ICE servers, and offer when it is our turn.
        Returns the join reply."""
        self._session = aiohttp.ClientSession()
        joined = await self._connect_and_join()
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.device_token:
            headers["X-Device-Token"] = self.device_token
        async with self._session.get(f"{self.base_url}/api/v1/visits/{self.visit_id}/ice",
                                     headers=headers) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
                raise VisitError(error.get("code", f"http_{resp.status}"),
                                 error.get("message", "could not fetch the ICE servers"))
        self.ice_servers = body["ice_servers"]
        rtc_configuration(self.ice_servers, loopback_only=self.loopback_only)  # fail early
        self._worker = asyncio.create_task(self._work(), name="visit-client-worker")
        await self._pushes.put({"type": "_offer", "data": {}})  # offers if it is our turn
        if self.role == "person" and self.media == "direct":
            self._spawn(self._watch_media())
        return joined

    async def _connect_and_join(self) -> dict[str, Any]:
        """Open the socket, authenticate and join the visit; the join reply."""
        assert self._session is not None
        protocol = JSON if self.codec == "json" else MSGPACK
        self._ws = await self._session.ws_connect(f"{self.base_url}/ws", protocols=(protocol,),
                                                  heartbeat=20)
        self._reader = asyncio.create_task(self._read(), name="visit-client-reader")
        device = {"device_token": self.device_token} if self.device_token else {}
        await self.call("auth", {"token": self.token, **device})
        return self._joined(await self.call("visit.join", {"visit_id": self.visit_id}))

    def _joined(self, joined: dict[str, Any]) -> dict[str, Any]:
        self.visit = joined.get("visit")
        self.role = joined.get("role")
        self.media = joined.get("media", "direct")
        self.peer_present = bool(joined.get("peer_present"))
        self.stall_s = float(joined.get("media_stall_s", self.stall_s))
        self.gap_s = float(joined.get("media_gap_s", min(self.gap_s, self.stall_s)))
        self.janus_creds = joined.get("janus")
        return joined

    async def _reconnect(self) -> bool:
        """The socket dropped: reach the service again, rejoin, start a new session. False
        when it gave up (the visit is over, or `reconnect_s` passed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_s
        while not self._closed and loop.time() < deadline:
            with contextlib.suppress(Exception):
                if self._ws is not None:
                    await self._ws.close()
            try:
                await self._connect_and_join()
            except VisitError as exc:
                if exc.code in ("visit_over", "not_found", "forbidden"):
                    log.info("visit client: not rejoining (%s)", exc.code)
                    return False
            except (aiohttp.ClientError, ConnectionError, TimeoutError, OSError) as exc:
                log.info("visit client: service not reachable yet (%s)", exc)
            else:
                self.reconnects += 1
                self._reported = None  # the rejoin reset our media on the row: report again
                if self._janus_keeps():
                    return True  # our media never went through the process that died
                if self.media == "relay" or self.role == "family":
                    await self._drop_pc()  # the offering side starts the new session
                    if self._should_offer():
                        await self._offer()
                return True
            await asyncio.sleep(RECONNECT_PAUSE_S)
        return False

    async def leave(self) -> None:
        """Send `visit.leave` (unless the visit already ended) and close everything."""
        if not self._closed and self.ended is None and self._ws is not None \
                and not self._ws.closed:
            with contextlib.suppress(VisitError, ConnectionError, TimeoutError,
                                     aiohttp.ClientError):
                await asyncio.wait_for(self.call("visit.leave", {"visit_id": self.visit_id}), 5)
        await self.close()

    async def close(self) -> None:
        """Close the peer connection, the local tracks, the socket and the HTTP session.
        Idempotent; it also runs by itself on `visit.ended`, or when the socket is lost and
        reconnecting gives up."""
        self._begin_close()
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    def _begin_close(self) -> None:
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.create_task(self._shutdown(), name="visit-client-close")

    async def _shutdown(self) -> None:
        tasks = [t for t in (self._worker, self._reader, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drop_pc()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ConnectionError("the visit client closed"))
        self._replies.clear()
        await self._notify()

    @property
    def closed(self) -> bool:
        """True once the client is closing or closed (by `leave`, `close`, `visit.ended`, or the
        server closing the socket)."""
        return self._closed

    # -- waiting helpers (tests, benchmarks, the CLI)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds (re-checked whenever the client's state changes).
        Bound it with `asyncio.timeout(...)`."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate() or self._closed)
        if not predicate():
            raise ConnectionError(f"the visit client closed (ended: {self.ended})")

    async def wait_frames(self, kind: str, count: int) -> None:
        await self.wait_for(lambda: self.frames.get(kind, 0) >= count)

    async def wait_connected(self) -> None:
        await self.wait_for(lambda: self.connection_state == "connected")

    async def wait_event(self, kind: str) -> dict[str, Any]:
        await self.wait_for(lambda: any(k == kind for k, _ in self.events))
        return next(d for k, d in self.events if k == kind)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the socket

    def _encode(self, value: dict[str, Any]) -> str | bytes:
        if self.codec == "json":
            return json.dumps(value, separators=(",", ":"))
        return msgpack.packb(value, use_bin_type=True)

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        """Send a command and wait for its reply's `ok`; VisitError on an `error` reply."""
        if self._ws is None or self._ws.closed:
            raise ConnectionError("the socket is closed")
        self._next_id += 1
        command_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[command_id] = future
        frame = self._encode({"id": command_id, "op": op, "args": args})
        try:
            if isinstance(frame, str):
                await self._ws.send_str(frame)
            else:
                await self._ws.send_bytes(frame)
            return await asyncio.wait_for(future, REPLY_TIMEOUT_S)
        finally:
            self._replies.pop(command_id, None)

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    value = json.loads(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    value = msgpack.unpackb(msg.data, raw=False)
                else:
                    continue
                if not isinstance(value, dict):
                    continue
                if "type" in value:
                    await self._pushes.put(value)
                    continue
                future = self._replies.get(value.get("id"))
                if future is None:
                    log.warning("unsolicited reply %s", value)
                elif not future.done():
                    if "error" in value:
                        err = value["error"] or {}
                        future.set_exception(VisitError(err.get("code", "error"),
                                                        err.get("message", "")))
                    else:
                        future.set_result(value.get("ok"))
        finally:
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError(
                        f"the socket closed ({ws.close_code})"))
            await self._pushes.put({"type": "_lost", "data": {"ws": id(ws)}})

    # -- pushes, handled one at a time in arrival order

    async def _work(self) -> None:
        while True:
            push = await self._pushes.get()
            kind, data = push.get("type"), push.get("data") or {}
            if kind == "_lost":
                if data.get("ws") != id(self._ws):
                    continue  # an older socket's end, already replaced
                if self.ended is not None or self._closed or not self.reconnect_s \
                        or not await self._reconnect():
                    kind = "_closed"
            else:
                try:
                    await self._handle(kind, data)
                except (VisitError, ConnectionError, ValueError) as exc:
                    log.warning("visit client: %s while handling %s", exc, kind)
            await self._notify()
            if kind == "_closed" or self.ended is not None:
                self._begin_close()
                return

    async def _handle(self, kind: str | None, data: dict[str, Any]) -> None:
        if kind == "_offer":
            if self._should_offer():
                await self._offer()
            return
        if kind == "_janus_lost":
            if self.janus is not None and id(self.janus) == data.get("party"):
                await self._janus_rejoin()
            return
        if kind == "_offer_again":
            if self.pc is not None and id(self.pc) == data.get("pc"):
                await self._drop_pc()
                if self._should_offer():
                    await self._offer()
            return
        if data.get("visit_id") not in (None, self.visit_id):
            return
        if kind in SURFACED:
            self.events.append((kind, data))
            if self.on_event is not None:
                result = self.on_event(kind, data)
                if asyncio.iscoroutine(result):
                    await result
        if kind == "visit.peer":
            self.peer_present = bool(data.get("present"))
            if self.media == "relay":
                return
            if not self.peer_present:
                await self._drop_pc()  # the peer left: wait for it to come back
                return
            if self.pc is not None and self.role == "family":
                if self._offer_fresh():
                    return  # offered since the peer's join was known: it is on its way
                # The peer (re)joined while we still hold a session: its process may have died
                # without saying it left, so the old session is dead. Start a new one.
                await self._drop_pc()
            if self._should_offer():
                await self._offer()
        elif kind == "visit.relay_moved":
            await self._relay_moved(str(data.get("relay")))
        elif kind == "visit.media_lost" and self.janus_creds is not None:
            await self._janus_rejoin()  # Kinwire saw our Janus server die
        elif kind == "visit.signal":
            if data.get("from") == "server" and data.get("relay"):
                self.relay = str(data["relay"])  # the relay that answered this session
            if "description" in data:
                await self._on_description(data["description"])
            elif "candidate" in data:
                await self._on_candidate(data["candidate"])
        elif kind == "visit.ended":
            self.ended = str(data.get("reason", "ended"))

    async def _relay_moved(self, relay: str) -> None:
        """Relay mode: the server's relay of this visit moved (its process died or drained):
        offer to the new one at once. Once per new relay: several processes may say so."""
        if self.media != "relay" or relay in (self.relay, self._moved_to):
            return
        log.info("visit client: the relay moved to %s; offering to it", relay)
        self._moved_to = relay
        self.relay_moves += 1
        await self._drop_pc()
        await self._offer()

    def _should_offer(self) -> bool:
        if self.pc is not None or self.janus is not None:
            return False
        return self.media == "relay" or (self.role == "family" and self.peer_present)

    # -- WebRTC

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_local_tracks(self) -> list[MediaStreamTrack]:
        """Fresh camera and microphone tracks for each peer connection: aiortc does not resume
        sending a track that a closed peer connection's sender was reading."""
        if self.make_tracks is not None:
            return self.make_tracks()
        width, height, fps = self.size
        if self.camera == "synthetic":
            return [SyntheticVideoTrack(width, height, fps), ToneAudioTrack()]
        player = MediaPlayer(self.camera, loop=True)
        tracks = [t for t in (player.video, player.audio) if t is not None]
        if player.audio is None:
            tracks.append(ToneAudioTrack())
        return tracks

    async def _new_pc(self) -> RTCPeerConnection:
        await self._drop_pc()
        pc = RTCPeerConnection(rtc_configuration(self.ice_servers,
                                                 loopback_only=self.loopback_only))
        self.pc = pc
        self._pending_candidates = []
        self._local = self._new_local_tracks()
        for track in self._local:
            pc.addTrack(track)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            recover_quickly(next(t for t in pc.getTransceivers() if t.receiver.track is track))
            self._spawn(self._count(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            self.connection_state = pc.connectionState
            if pc.connectionState == "connected":
                if not self._watching():  # the kiosk reports once media is seen flowing
                    await self._report("connected")
            elif pc.connectionState in ("failed", "closed", "disconnected"):
                await self._report("disconnected", self._reported_sending())
            await self._notify()

        return pc

    async def _drop_pc(self) -> None:
        party, self.janus = self.janus, None
        if party is not None:
            await party.close()
            self.connection_state = "closed"
        pc, self.pc = self.pc, None
        if pc is None:
            return
        if self._reported is not None and self._reported[0] == "connected":
            await self._report("disconnected", self._reported_sending())
        self.connection_state = "closed"
        await pc.close()
        for track in self._local:  # aiortc stops the senders, not the tracks they read
            track.stop()
        self._local = []

    async def _report(self, state: str, sending: bool | None = None,
                      stalled_s: float | None = None) -> None:
        if self._reported == (state, sending):
            return
        self._reported = (state, sending)
        if self._closed or self._ws is None or self._ws.closed:
            return  # leaving: visit.leave says it all
        args: dict[str, Any] = {"visit_id": self.visit_id, "state": state}
        if sending is not None:
            args["sending"] = sending
        if stalled_s is not None and state == "disconnected":
            args["stalled_s"] = round(stalled_s, 3)  # the meter pauses from the last frame
        try:
            await self.call("visit.media", args)
        except (VisitError, ConnectionError, TimeoutError) as exc:
            log.info("visit.media %s not reported: %s", state, exc)

    def _reported_sending(self) -> bool | None:
        return self._reported[1] if self._reported is not None else None

    def _watching(self) -> bool:
        return self.role == "person" and self.media == "direct"

    def _advancing(self, name: str, value: int, now: float, within: float | None = None) -> bool:
        """Whether counter `name` moved within `within` (the stall threshold by default) and
        ever moved."""
        seen, moved_at = self._moved.get(name, (0, now))
        if value != seen:
            seen, moved_at = value, now
        self._moved[name] = (seen, moved_at)
        return value > 0 and now - moved_at <= (self.stall_s if within is None else within)

    async def media_now(self) -> tuple[str, bool]:
        """The person's side's view: (connected with media arriving from the family, own
        outbound media advancing), from the frames received and the senders' packet counts."""
        pc, now = self.pc, asyncio.get_running_loop().time()
        if pc is None:
            return "disconnected", self._reported_sending() is not False
        # The family's picture (its video, or its audio when it sends none) stopped for
        # gap_s is an outage, reported with how long ago it stopped (docs/visits.md).
        kind = "video" if self.frames.get("video", 0) > 0 else "audio"
        receiving = self._advancing(f"received {kind}", self.frames.get(kind, 0), now,
                                    self.gap_s)
        moved = self._moved.get(f"received {kind}")
        self.still_s = None if receiving or moved is None or moved[0] == 0 else now - moved[1]
        sending = True
        for sender in pc.getSenders():
            if sender.track is None:
                continue
            sent = sum(getattr(stat, "packetsSent", 0) for stat in
                       (await sender.getStats()).values() if stat.type == "outbound-rtp")
            sending = self._advancing(f"sent {sender.kind}", sent, now) and sending
        connected = pc.connectionState == "connected" and receiving
        return ("connected" if connected else "disconnected"), sending

    async def _watch_media(self) -> None:
        """The kiosk's reports (direct mode): what it sees, whenever that changes."""
        while not self._closed:
            await asyncio.sleep(WATCH_S)
            if self.pc is None or self.pc.connectionState != "connected":
                continue  # before and between connections: the state changes report
            state, sending = await self.media_now()
            await self._report(state, sending, self.still_s)

    async def _count(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        self.frames.setdefault(kind, 0)
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.frames[kind] += 1
            if self.frames[kind] % 10 == 1:
                await self._notify()

    # -- relay mode on Janus (signalling/janus_party.py)

    async def _start_janus(self) -> None:
        assert self.janus_creds is not None
        await self._drop_pc()
        config = rtc_configuration(self.ice_servers, loopback_only=self.loopback_only)
        party = self.janus = JanusParty(
            self.janus_creds, config=config, tracks=self._new_local_tracks(),
            on_track=self._janus_track,
            on_change=lambda: self._janus_changed(party))
        try:
            await party.start()
        except (JanusUnavailable, JanusError) as exc:
            log.info("visit client: Janus at %s refused or did not answer (%s)",
                     party.server, exc)
            party.lost = True
            await self._janus_changed(party)

    def _janus_track(self, track: MediaStreamTrack, transceiver: RTCRtpTransceiver) -> None:
        self._spawn(self._count(track))

    async def _janus_changed(self, party: JanusParty) -> None:
        if party is not self.janus:
            return
        self.connection_state = "closed" if party.lost else party.state
        if party.lost and self._told_lost is not party:
            self._told_lost = party  # one rejoin per lost party (a hang-up, then the poll)
            self._spawn(self._after_pause({"type": "_janus_lost", "data": {"party": id(party)}}))
        await self._notify()

    async def _after_pause(self, push: dict[str, Any]) -> None:
        await asyncio.sleep(RECONNECT_PAUSE_S)  # a dead server refuses at once: not a spin
        await self._pushes.put(push)

    async def _janus_rejoin(self) -> None:
        """Our Janus server stopped answering (or Kinwire says it died): join again and start
        a new party where Kinwire says the room is now (docs/visits.md, "Janus fleet"). Until
        Kinwire sees the server dead (its liveness lease) it names the same one, which refuses:
        the party is lost again and this runs again after a pause."""
        try:
            self._joined(await self.call("visit.join", {"visit_id": self.visit_id}))
        except VisitError as exc:
            if exc.code in FINAL:
                log.info("visit client: not rejoining (%s)", exc.code)
                return  # its visit.ended closes us
            log.info("visit client: rejoin refused (%s); trying again", exc.code)
            self._spawn(self._after_pause({"type": "_janus_lost",
                                           "data": {"party": id(self.janus)}}))
            return
        except (ConnectionError, TimeoutError):
            return  # the socket's own reconnect joins again and starts a party
        if self._janus_keeps():
            return  # the push came late: our party is on the room Kinwire names, and alive
        if self.janus is None or self.janus.server != (self.janus_creds or {}).get("server"):
            self.janus_moves += 1
        await self._start_janus()

    def _janus_keeps(self) -> bool:
        """Our Janus party is alive on the room the last join named: nothing to redo."""
        party, creds = self.janus, self.janus_creds
        return (party is not None and creds is not None and not party.lost
                and (party.server, party.creds["room"]) == (creds["server"], creds["room"]))

    async def _offer(self) -> None:
        if self.janus_creds is not None:
            await self._start_janus()  # Janus answers our offer itself (janus_party.py)
            return
        pc = await self._new_pc()
        await pc.setLocalDescription(await pc.createOffer())
        await self._send_description(pc)
        self._offered_at = asyncio.get_running_loop().time()
        self._spawn(self._offer_again_unless_connected(pc))

    def _offer_fresh(self) -> bool:
        """An offer of ours awaits its answer, sent moments ago: a `visit.peer` push that
        reports the arrival our join reply already reported must not replace it (the answer
        to the first offer would meet the second)."""
        return (self.pc is not None and self.pc.signalingState == "have-local-offer"
                and asyncio.get_running_loop().time() - self._offered_at < FRESH_OFFER_S)

    async def _offer_again_unless_connected(self, pc: RTCPeerConnection) -> None:
        await asyncio.sleep(CONNECT_WAIT_S)
        if pc is self.pc and pc.connectionState != "connected" and not self._closed:
            log.info("visit client: no connection in %.0f s; offering again", CONNECT_WAIT_S)
            await self._pushes.put({"type": "_offer_again", "data": {"pc": id(pc)}})

    async def _send_description(self, pc: RTCPeerConnection) -> None:
        desc = pc.localDescription
        await self.call("visit.signal", {"visit_id": self.visit_id,
                                         "description": {"type": desc.type, "sdp": desc.sdp}})

    async def _on_description(self, description: dict[str, Any]) -> None:
        kind, sdp = description.get("type"), description.get("sdp")
        if kind not in ("offer", "answer") or not isinstance(sdp, str):
            raise ValueError(f"unusable description type {kind!r}")
        if kind == "offer":
            pc = await self._new_pc()  # an offer always starts a new session
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await self._flush_candidates(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            await self._send_description(pc)
            return
        pc = self.pc
        if pc is None or pc.signalingState != "have-local-offer":
            raise ValueError("an answer with no offer outstanding")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        await self._flush_candidates(pc)

    async def _on_candidate(self, candidate: dict[str, Any]) -> None:
        pc = self.pc
        if pc is None or pc.remoteDescription is None:
            self._pending_candidates.append(candidate)  # it raced ahead of its description
            return
        await self._add_candidate(pc, candidate)

    async def _flush_candidates(self, pc: RTCPeerConnection) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(pc, candidate)

    async def _add_candidate(self, pc: RTCPeerConnection, candidate: dict[str, Any]) -> None:
        line = candidate.get("candidate") or ""
        if line.startswith("candidate:"):
            line = line[len("candidate:"):]
        if not line:
            await pc.addIceCandidate(None)  # end of candidates
            return
        try:
            parsed = candidate_from_sdp(line)
        except (AssertionError, ValueError, IndexError) as exc:
            raise ValueError(f"unusable ICE candidate {line[:80]!r}") from exc
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        await pc.addIceCandidate(parsed)
