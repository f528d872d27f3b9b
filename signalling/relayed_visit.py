"""One relayed visit on the process that holds its lease (signalling/relay.py says which):
the sessions (one aiortc peer connection per party and per watching staff member), the
outlets that feed them and the recording, and the end that cuts the media.

The server is the only judge of a relayed call (docs/visits.md, "Trust"): every OBSERVE_S it
looks at the frames each party's tracks delivered here, and records on the visit row whether
media is arriving from both (the person's every track advancing within the stall threshold),
then pokes the meter. The clients' own `visit.media` reports change nothing in relay mode.

Two ways to relay (the `relay_transcode` setting): forwarding (the default,
signalling/forwarding.py), where each party's encoded frames go to the other party, to the
watchers and into the recording (signalling/remux.py) as they came; or transcoding, where
they are decoded and each consumer encodes its own copy through an `outlets.Outlet`
(signalling/recording.py records with x264). Transcoding is kept as the benchmarks' baseline
(docs/BENCHMARKS.md).

A party's offer starts a new session for that party. The consumers of its media switch to the
new session's tracks, the old session is closed, and the server answers. The server never
offers. A watcher's offer gets, on its video m-lines and then its audio m-lines, the family's
and then the person's camera and microphone. Offers and candidates are handled one at a time,
in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from common.broker import Subscription
from signalling import placement, transport_cc, visits
from signalling.forwarding import ForwardTrack, Source, forward_codecs, recover_quickly, tap
from signalling.leases import Lease
from signalling.outlets import Outlet, Timeline
from signalling.recording import STREAMS, Recording
from signalling.remux import RemuxRecording
from store import Record

if TYPE_CHECKING:
    from signalling.relay import Relay

log = logging.getLogger("kinwire.relay")
SIGNALS_MAX = 256  # queued signals per visit; beyond, new ones are dropped
WATCHERS_MAX = 4  # staff sessions per visit
OBSERVE_S = 0.5  # how often the media is looked at: the meter follows within this


@dataclass
class Session:
    """One account's peer connection with the server, and what feeds it."""

    account_id: str
    role: str  # family | person | watcher
    pc: RTCPeerConnection
    incoming: dict[str, MediaStreamTrack] = field(default_factory=dict)  # a party's, by kind
    receivers: dict[str, Any] = field(default_factory=dict)  # forwarding: by kind
    outlets: list[MediaStreamTrack] = field(default_factory=list)  # Outlet | ForwardTrack
    drains: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for outlet in self.outlets:
            outlet.stop()
        await self.pc.close()
        for task in self.drains:
            task.cancel()
        await asyncio.gather(*self.drains, return_exceptions=True)


class VisitRelay:
    """One relayed visit on its holder."""

    def __init__(self, relay: Relay, row: Record, *, holder: str, slot: int) -> None:
        self.r, self.row = relay, row
        # the visit's lease names this run (`<node>/<token>`); its slot here (placement.py)
        self.holder, self.slot = holder, slot
        self.visit_id, self.end_at, self.record = row.id, row.end_at, bool(row.record)
        self.parties = {row.family_id: "family", row.person_id: "person"}
        self.forward = not relay.transcode
        self.media = MediaRelay()
        self.sessions: dict[str, Session] = {}
        self.feeds: list[tuple[str, Outlet]] = []  # transcoding: (party role, outlet)
        self.received: dict[str, int] = {}  # transcoding: frames decoded, by "family video"
        # forwarding: each party's camera and microphone, across its sessions
        self.sources = {(party, kind): Source(kind, relay.metrics)
                        for party in ("family", "person") for kind in ("video", "audio")}
        self._advanced: dict[str, tuple[int, float]] = {}  # name -> (count, when it moved)
        self.observed = False  # what was last recorded: media arriving from both
        self.last_media: float | None = None  # monotonic: the family's media last moved
        self.recording: Recording | RemuxRecording | None = None
        self.closing = False
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SIGNALS_MAX)
        self._wake = asyncio.Event()
        self._subscriptions: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for account_id in self.parties:
            try:
                self._subscriptions.append(await self.r.broker.subscribe(
                    self.r.party_channel(account_id), queue_max=256))
            except Exception:  # no broker: the keeper's reads of the row still end it
                log.warning("visit %s: not following %s's channel", self.visit_id, account_id)
        self._tasks = [asyncio.create_task(self._work(), name=f"relay-{self.visit_id}"),
                       asyncio.create_task(self._keep(), name=f"relay-keep-{self.visit_id}"),
                       asyncio.create_task(self._observe(), name=f"relay-see-{self.visit_id}"),
                       *(asyncio.create_task(self._follow(s)) for s in self._subscriptions)]

    def enqueue(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("visit %s: signal from %s dropped (queue full)", self.visit_id,
                        message.get("from"))

    # -- signals

    async def _work(self) -> None:
        while (message := await self._queue.get()) is not None and not self.closing:
            try:
                await self._handle(message)
            except Exception as exc:  # a bad offer from one client must not stop the visit
                if self.closing:
                    return
                log.warning("visit %s: signal from %s not handled: %r", self.visit_id,
                            message.get("from"), exc)

    async def _handle(self, message: dict[str, Any]) -> None:
        sender = message.get("from")
        role = "watcher" if message.get("watch") else self.parties.get(sender)
        if role is None or not isinstance(sender, str):
            return
        if "description" in message:
            description = message["description"]
            if description.get("type") != "offer":  # the server answers, it never offers
                log.info("visit %s: %s sent an %s; ignored", self.visit_id, role,
                         description.get("type"))
                return
            await self._answer(sender, role, description["sdp"])
        elif "candidate" in message and sender in self.sessions:
            await _add_candidate(self.sessions[sender].pc, message["candidate"])

    async def _answer(self, sender: str, role: str, sdp: str) -> None:
        watchers = [s for s in self.sessions.values() if s.role == "watcher"]
        if role == "watcher" and sender not in self.sessions and len(watchers) >= WATCHERS_MAX:
            log.warning("visit %s: watcher %s refused (%d watching)", self.visit_id, sender,
                        len(watchers))
            return
        session = Session(sender, role, RTCPeerConnection(self.r.rtc_configuration(self.end_at)))
        pc, early = session.pc, []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if role == "watcher":
                return
            transceiver = next(t for t in pc.getTransceivers() if t.receiver.track is track)
            if self.forward:  # before the receiver starts, so that it never decodes
                tap(transceiver, self.sources[(role, track.kind)])
                session.receivers[track.kind] = transceiver.receiver
            else:
                recover_quickly(transceiver)
            if self.sessions.get(sender) is session:
                self._incoming(session, track)
            else:
                early.append(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            # failed: ICE consent ran out; closed: the client closed its side (DTLS close)
            if pc.connectionState in ("failed", "closed") and self.sessions.get(sender) is session:
                await self._forget(session)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if self.forward:
                forward_codecs(pc)
                transport_cc.negotiate(pc, sdp)  # the party's send-side estimate through us
        except BaseException:
            await session.close()  # a bad offer leaves the current session as it was
            raise
        if self.closing:
            await session.close()
            return
        old, self.sessions[sender] = self.sessions.get(sender), session
        for track in early:  # the consumers of its media switch to the new session's
            self._incoming(session, track)
        if old is not None:
            await self._drop(old)
        self._attach_outlets(session)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await self._forget(session)
            raise
        if self.closing or self.sessions.get(sender) is not session:
            await self._forget(session)
            return
        answer = pc.localDescription
        await self.r.push_live(sender, "visit.signal", {
            "visit_id": self.visit_id, "from": "server", "relay": self.holder,
            "description": {"type": answer.type, "sdp": answer.sdp}})

    def _attach_outlets(self, session: Session) -> None:
        """What the session is sent: a party gets the other party's camera and microphone; a
        watcher gets, on its video m-lines then its audio m-lines, family's then person's."""
        if session.role == "watcher":
            wanted = {"video": ["family", "person"], "audio": ["family", "person"]}
        else:
            other = "person" if session.role == "family" else "family"
            wanted = {"video": [other], "audio": [other]}
        for transceiver in session.pc.getTransceivers():
            queue = wanted.get(transceiver.kind) or []
            if queue and transceiver.sender.track is None and self.forward:
                track = ForwardTrack(self.sources[(queue.pop(0), transceiver.kind)])
                session.outlets.append(track)
                track.attach_to(transceiver.sender)
                transceiver.direction = "sendrecv"
            elif queue and transceiver.sender.track is None:
                outlet = self._outlet(queue.pop(0), transceiver.kind)
                session.outlets.append(outlet)
                transceiver.sender.replaceTrack(outlet)
                transceiver.direction = "sendrecv"

    def _outlet(self, party: str, kind: str, timeline: Timeline | None = None) -> Outlet:
        outlet = Outlet(kind, self.media, timeline)
        outlet.switch(self._current(party, kind))
        self.feeds.append((party, outlet))
        return outlet

    def _current(self, party: str, kind: str) -> MediaStreamTrack | None:
        account = next(a for a, r in self.parties.items() if r == party)
        session = self.sessions.get(account)
        return session.incoming.get(kind) if session is not None else None

    def _incoming(self, session: Session, track: MediaStreamTrack) -> None:
        """A party's new camera or microphone: every consumer of it switches over (forwarding:
        its source reads the new session's receiver; transcoding: each outlet switches, and a
        drain keeps reading the track, and counts, so that it never queues up unread)."""
        session.incoming[track.kind] = track
        if self.forward:
            self.sources[(session.role, track.kind)].attach(session.receivers[track.kind])
            if self.record and self.recording is None:
                self.recording = RemuxRecording(self.r.recordings_dir, self.visit_id, [
                    self.sources[stream] for stream in STREAMS])
                self.recording.start()
            return
        for party, outlet in self.feeds:
            if party == session.role and outlet.kind == track.kind:
                outlet.switch(track)
        session.drains.append(asyncio.create_task(
            self._drain(f"{session.role} {track.kind}", self.media.subscribe(track, False))))
        if self.record and self.recording is None:
            timeline = Timeline()
            self.recording = Recording(self.r.recordings_dir, self.visit_id, [
                self._outlet(party, kind, timeline) for party, kind in STREAMS])
            self.recording.start()

    async def _drain(self, name: str, track: MediaStreamTrack) -> None:
        self.received.setdefault(name, 0)
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.received[name] += 1

    async def _forget(self, session: Session) -> None:
        if self.sessions.get(session.account_id) is session:
            del self.sessions[session.account_id]
        await self._drop(session)

    async def _drop(self, session: Session) -> None:
        for kind, receiver in session.receivers.items():
            self.sources[(session.role, kind)].detach(receiver)
        self.feeds = [(p, o) for p, o in self.feeds if o not in session.outlets]
        await session.close()

    def watching(self) -> list[str]:
        """The staff accounts with a watch session here (told when the visit moves)."""
        return [s.account_id for s in self.sessions.values() if s.role == "watcher"]

    # -- what the server sees

    def seeing(self, now: float) -> bool:
        """Media arriving from both parties: each has a session; the family's picture (its
        video, or its audio when it sends no video) delivered a frame within the gap
        threshold (an outage: docs/visits.md, "Outages"), and every one of the person's tracks
        within the stall threshold (monotonic). `self.last_media` keeps when the family's
        media last moved, for the stop's instant."""
        moved: dict[str, dict[str, tuple[int, float]]] = {"family": {}, "person": {}}
        for session in self.sessions.values():
            if session.role not in moved:
                continue
            for kind in session.incoming:
                name = f"{session.role} {kind}"
                count = self._frames(session.role, kind)
                seen, moved_at = self._advanced.get(name, (0, now))
                if count != seen:
                    seen, moved_at = count, now
                self._advanced[name] = (seen, moved_at)
                moved[session.role][kind] = (count, moved_at)
        family = moved["family"]
        decisive = family.get("video") if family.get("video", (0, 0))[0] > 0 \
            else family.get("audio")
        self.last_media = decisive[1] if decisive and decisive[0] > 0 else None
        family_fresh = decisive is not None and decisive[0] > 0 \
            and now - decisive[1] <= self.r.gap_s
        person = moved["person"].values()
        return family_fresh and bool(person) and all(
            count > 0 and now - at <= self.r.stall_s for count, at in person)

    async def _observe(self) -> None:
        """Record on the visit what the server sees whenever it changes, and poke the meter.
        Stopped by the flag, never cancelled, so no database call is cut in half."""
        while not self.closing:
            seeing = self.seeing(time.monotonic())
            if seeing != self.observed:
                await self._record(seeing)
            await asyncio.sleep(OBSERVE_S)

    async def _record(self, seeing: bool) -> None:
        try:
            sink, now = self.r.sink(), self.r.clock()
            stopped_at = None
            if not seeing and self.last_media is not None:  # from the family's last frame
                ago = min(time.monotonic() - self.last_media, self.r.stall_s)
                stopped_at = now - timedelta(seconds=max(0.0, ago))
            async with self.r.store.write() as conn:
                row = await visits.observe(conn, sink, self.visit_id, seeing, now,
                                           self.r.node_id, stopped_at=stopped_at)
            await sink.signal(self.r.broker)
            self.observed = seeing
            await self.r.poke(self.visit_id)
            if row.status == "live" and row.media_changed_at == now:  # this made it live
                for party in self.parties:
                    await self.r.push_live(party, "visit.live", {"visit_id": self.visit_id})
        except Exception:
            log.warning("visit %s: could not record the media seen", self.visit_id,
                        exc_info=True)

    def _frames(self, role: str, kind: str) -> int:
        """Frames received here on a party's track so far: encoded frames forwarded, or frames
        decoded (transcoding)."""
        if self.forward:
            return self.sources[(role, kind)].frames
        return self.received.get(f"{role} {kind}", 0)

    def media_seen(self) -> dict[str, dict[str, tuple[int, int, float | None]]]:
        """What the server has received from each party, by kind: (frames, RTP packets,
        time.monotonic() of the last frame or None). Forwarding only (transcoding counts
        decoded frames in `received`). Read by presence: the server's own view of the media."""
        seen: dict[str, dict[str, tuple[int, int, float | None]]] = {}
        for (party, kind), source in self.sources.items():
            seen.setdefault(party, {})[kind] = (source.frames, source.packets, source.last_at)
        return seen

    # -- the end

    def end(self, reason: str) -> None:
        """Cut the media now and wind the relay down (idempotent)."""
        if self._closer is None:
            self.closing = True
            self._closer = asyncio.create_task(self._close(reason),
                                               name=f"relay-end-{self.visit_id}")

    async def closed(self) -> None:
        if self._closer is not None:
            await asyncio.shield(self._closer)

    async def _close(self, reason: str) -> None:
        started = time.monotonic()
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(self._drop(s) for s in sessions), return_exceptions=True)
        cut_s = time.monotonic() - started
        if self.observed:  # the media is cut: say so now, not after the winding down below
            await self._record(False)  # (a drain's gap was billed until then: up to 1.6 s)
        self._wake.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.close()
        if self._tasks:
            work = self._tasks[0]  # let it finish the offer in hand, if any
            try:
                await asyncio.wait_for(asyncio.shield(work), 5.0)
            except TimeoutError:
                work.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        late, self.sessions = list(self.sessions.values()), {}  # made while ending
        await asyncio.gather(*(self._drop(s) for s in late), return_exceptions=True)
        if self.observed:  # a session made while ending, and cut above
            await self._record(False)
        path = await self.recording.close() if self.recording is not None else None
        if path is not None and self.r.keep_recording is not None:
            try:
                await self.r.keep_recording(self.row, path)
            except Exception:
                log.exception("visit %s: recording %s not kept", self.visit_id, path)
        lease, slot_lease = self._leases()
        await lease.release()
        await slot_lease.release()
        self.r.ended(self)
        received = self.received if not self.forward else {
            f"{party} {kind}": s.frames for (party, kind), s in self.sources.items()}
        log.info("visit %s relay ended (%s): media cut in %.3f s; frames received %s; "
                 "recording %s", self.visit_id, reason, cut_s, received, path)

    async def _follow(self, subscription: Subscription) -> None:
        async for item in subscription:
            live = item.get("live") if isinstance(item, dict) else None
            if isinstance(live, dict):
                data = live.get("data") or {}
                if live.get("type") == "visit.ended" and data.get("visit_id") == self.visit_id:
                    self.end(str(data.get("reason", "ended")))
                    return
            else:  # a stored event (or a gap): the visit may have ended; look at the row
                self._wake.set()

    async def _keep(self) -> None:
        """Renew the lease; read the row at each renewal and whenever woken. Stopped by the
        flag, never cancelled, so no database call is cut in half."""
        period = self.r.lease_s / 3
        renew_at = time.monotonic()
        while not self.closing:
            self._wake.clear()  # before looking: a wake during this pass brings the next one
            try:
                async with self.r.store.read() as conn:
                    row = await visits.get(conn, self.visit_id)
                if row.status not in visits.IN_CALL:
                    self.end(row.end_reason or row.status)
                    return
            except Exception:
                log.warning("visit %s: could not read the visit", self.visit_id, exc_info=True)
            if time.monotonic() >= renew_at:
                if not await self._renew():
                    self.end("lease lost")
                    return
                renew_at = time.monotonic() + period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, renew_at - time.monotonic()))

    def _leases(self) -> tuple[Lease, Lease]:
        return placement.leases(self.r.broker, self.r.node_id, self.visit_id, self.holder,
                                self.slot, self.r.lease_s)

    async def _renew(self) -> bool:
        """False when the visit's lease is lost; a failed renewal keeps it
        (signalling/leases.py). The slot is renewed, or taken again if it lapsed, only while
        the broker answers."""
        lease, slot_lease = self._leases()
        failed: list[Exception] = []
        if not await lease.keep(failed.append):
            return False
        if not failed:
            try:
                if not await slot_lease.keep(failed.append):
                    await slot_lease.acquire()  # lapsed
            except Exception as error:
                failed.append(error)
        if failed:  # counted by the broker (kinwire_leases_total)
            log.warning("visit %s: relay lease not renewed (%r); kept, retried", self.visit_id,
                        failed[0])
        return True


async def _add_candidate(pc: RTCPeerConnection, candidate: dict[str, Any]) -> None:
    """A trickled candidate (browsers trickle; aiortc clients put theirs in the SDP)."""
    line = candidate.get("candidate") or ""
    line = line.split("candidate:", 1)[1] if "candidate:" in line else line
    if not line:
        await pc.addIceCandidate(None)
        return
    parsed = candidate_from_sdp(line)
    parsed.sdpMid = candidate.get("sdpMid")
    parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        parsed.sdpMLineIndex = 0
    await pc.addIceCandidate(parsed)
