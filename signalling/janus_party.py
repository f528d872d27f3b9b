"""A party's media through Janus (KINWIRE_MEDIA_ENGINE=janus): what the reference visit client
(signalling/visit_client.py) does with the `janus` credentials of its `visit.join` reply
(docs/API.md, "Visits through Janus"). The browser apps do the same (static/js/janus.js).

1. A Janus session on `server` (the HTTP API), every request carrying the party's `token`.
2. A publisher handle joins the visit's room (`room`, `pin`) as the party's `feed` and
   publishes its camera and microphone: our offer, Janus's answer.
3. Every other publisher of the room (the other party: listed when we join, or announced when
   it publishes later) gets a subscriber handle: it joins the room as a subscriber of that
   feed, Janus offers the feed's streams, we answer and `start`. A publisher that leaves or
   unpublishes loses its subscription; one that publishes again gets a new one.
4. Events come on the session's long poll, each for one handle (`sender`). When the server stops
   answering (the poll or a keep-alive fails) or hangs up our publisher, the party is `lost`:
   the visit client then asks Kinwire again (visit.join), which places the room on a live
   server if this one is dead, and starts a new party there.

Kinwire never hears from this side: in relay mode what Janus saw is the truth (its event
handler posts reach the meter), and the client reports no media state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from signalling.forwarding import recover_quickly
from signalling.janus import Handle, JanusError, JanusServer, JanusUnavailable, Session

log = logging.getLogger("kinwire.janus_party")


class JanusParty:
    """One party in its visit's Janus room: `publisher` (our peer connection to Janus),
    `subscribers` (feed -> its peer connection), `state` (the publisher's connection state),
    `lost` (the server is gone or hung up on us). `on_track(track, transceiver)` gets every
    track received, before its receiver starts (bench/ taps it there, undecoded); `on_change`
    is awaited whenever `state` or `lost` changes."""

    def __init__(self, creds: dict[str, Any], *, config: RTCConfiguration,
                 tracks: list[MediaStreamTrack],
                 on_track: Callable[[MediaStreamTrack, Any], None],
                 on_change: Callable[[], Awaitable[None]]) -> None:
        self.creds = creds
        self.server: str = creds["server"]
        self.feed: str | None = creds.get("feed")
        self.config = config
        self.tracks = tracks
        self.on_track, self.on_change = on_track, on_change
        self.publisher: RTCPeerConnection | None = None
        self.subscribers: dict[str, RTCPeerConnection] = {}
        self.state = "new"
        self.lost = False
        self._http: aiohttp.ClientSession | None = None
        self._session: Session | None = None
        self._publishing: Handle | None = None
        self._handles: dict[int, str] = {}  # subscriber handle id -> the feed it receives
        self._offered: set[int] = set()  # subscriber handles whose first offer was answered
        self._poll: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the session, join and publish. JanusUnavailable or JanusError when the server
        does not answer or refuses (a room not there: the visit moved or ended)."""
        self._http = aiohttp.ClientSession()
        janus = JanusServer(self._http, self.server, token=self.creds["token"])
        self._session = await janus.session()
        self._poll = asyncio.create_task(self._events(), name="janus-party-events")
        if self.feed is None:
            return  # staff only watch (not done by this client yet)
        self._publishing = await self._session.attach()
        pc = self.publisher = RTCPeerConnection(self.config)
        for track in self.tracks:
            pc.addTrack(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is self.publisher:
                self.state = pc.connectionState
                await self.on_change()

        await self._publishing.message({"request": "join", "ptype": "publisher",
                                        "room": self.creds["room"], "pin": self.creds["pin"],
                                        "id": self.feed})
        await pc.setLocalDescription(await pc.createOffer())
        await self._publishing.message({"request": "publish"},
                                       jsep={"type": "offer", "sdp": pc.localDescription.sdp})

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        pcs = [pc for pc in (self.publisher, *self.subscribers.values()) if pc is not None]
        self.publisher, self.subscribers = None, {}
        for pc in pcs:
            await pc.close()
        for track in self.tracks:  # aiortc stops the senders, not the tracks they read
            track.stop()
        if self._session is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._session.close(), 2.0)  # a dead server: no wait
        if self._http is not None:
            await self._http.close()

    # -- events

    async def _events(self) -> None:
        assert self._session is not None
        try:
            while self._session.alive:
                for event in await self._session.events():
                    try:
                        await self._on_event(event)
                    except JanusError as exc:  # a refused subscription: the rest goes on
                        log.warning("janus party %s: %s", self.feed, exc)
            reason = "keep-alive failed"
        except JanusUnavailable as exc:
            reason = str(exc)
        log.info("janus party %s: the server is lost (%s)", self.feed, reason)
        self.lost = True
        await self.on_change()

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind, sender = event.get("janus"), event.get("sender")
        data = (event.get("plugindata") or {}).get("data") or {}
        ours = self._publishing is not None and sender == self._publishing.id
        if kind == "hangup" and ours:
            self.lost = True  # Janus dropped our publisher's peer connection
            await self.on_change()
        elif kind == "event" and "error_code" in data:
            log.warning("janus party %s: %s", self.feed, data.get("error"))
            self._handles.pop(sender, None)
        elif kind == "event" and ours:
            jsep = event.get("jsep")
            if jsep is not None and self.publisher is not None:
                await self.publisher.setRemoteDescription(
                    RTCSessionDescription(jsep["sdp"], jsep["type"]))
            for publisher in data.get("publishers") or []:
                await self._subscribe(str(publisher["id"]))
            gone = data.get("unpublished", data.get("leaving"))
            if gone is not None and str(gone) in self.subscribers:
                await self.subscribers.pop(str(gone)).close()
        elif kind == "event" and sender in self._handles and event.get("jsep"):
            feed = self._handles[sender]
            if sender not in self._offered:
                self._offered.add(sender)
                await self._answer(feed, sender, event["jsep"])
            else:
                # Janus 1.x offers again on the same subscription to take the feed's streams
                # away once its publisher left. Not answered (a new connection for it stalls
                # half set up, and could replace the subscription to the feed's new session):
                # the subscription is over; the feed's next publish subscribes afresh.
                self._handles.pop(sender, None)
                self._offered.discard(sender)

    async def _subscribe(self, feed: str) -> None:
        if feed == self.feed or self._session is None:
            return
        old = self.subscribers.pop(feed, None)
        if old is not None:  # it published again: a new session of its
            await old.close()
        handle = await self._session.attach()
        self._handles[handle.id] = feed
        await handle.message({"request": "join", "ptype": "subscriber",
                              "room": self.creds["room"], "pin": self.creds["pin"],
                              "streams": [{"feed": feed}]})

    async def _answer(self, feed: str, handle_id: int, offer: dict[str, Any]) -> None:
        assert self._session is not None
        pc = RTCPeerConnection(self.config)
        self.subscribers[feed] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            transceiver = next(t for t in pc.getTransceivers() if t.receiver.track is track)
            recover_quickly(transceiver)
            self.on_track(track, transceiver)

        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        handle = Handle(self._session, handle_id)
        await handle.message({"request": "start", "room": self.creds["room"]},
                             jsep={"type": "answer", "sdp": pc.localDescription.sdp})
