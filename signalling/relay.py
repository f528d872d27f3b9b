"""Relay mode: the server terminates both parties' peer connections, forwards their media,
records it (unless the visit's `record` is false), lets staff watch live, and cuts the media
itself when the visit ends. docs/visits.md, "Relay mode", is the description for people.

Which process relays a visit: the one holding the broker lease `relay:<visit_id>` (ttl
`relay_lease_s`, renewed every third of it). The first process that receives a relay-mode
signal for the visit takes it: `visit.signal` from a party, or `visit.watch` with an offer from
staff. Any other process publishes the signals it receives on the process-wide broker channel
"relay" as `{visit_id, from, watch, description | candidate}`, and the holder takes the ones
for its visits. Answers go back to the sender's account as live pushes
`visit.signal {visit_id, from: "server", description}`, on whatever process its socket is.
If the holder dies, its peer connections die with it. The clients' sessions fail, they rejoin
and offer again, and the first process to get an offer once the lease has run out takes the
visit over (there is no media failover).

On the holder, a `VisitRelay` (signalling/relayed_visit.py) per visit keeps one session (an
aiortc RTCPeerConnection) per party and per watching staff member. It only ever answers; a new
offer from the same account starts a new session for it. Each consumer (the other party's
session, a watcher's session, the recording) reads a party's camera and microphone through its
own `outlets.Outlet`, a MediaRelay subscription that switches to the party's next session
without renegotiation. Offers and candidates are handled one at a time, in arrival order.

Ending: the holder follows both parties' broker channels. A `visit.ended` push ends the relay
at once, whoever ended the visit (the meter's time_up or balance_exhausted, a staff end, a
hang-up) and on whatever process. Any other stored event, or a gap, makes it read the visit's
row, and so does every lease renewal, in case a push was lost. Ending closes every peer
connection first, so the media stops within a second even if a client ignores the end. Then it
finishes the recording and releases the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiortc import RTCBundlePolicy

from signalling import visits
from signalling.media import rtc_configuration
from signalling.relayed_visit import VisitRelay
from signalling.turn import ice_servers

log = logging.getLogger("kinwire.relay")
CHANNEL = "relay"
TURN_ACCOUNT = "kinwire-relay"
Push = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


class Relay:
    """This process's relayed visits (the module docstring says who holds which)."""

    def __init__(self, store: Any, broker: Any, *, node_id: str, lease_s: float,
                 turn_secret: str, turn_urls: tuple[str, ...], stun_urls: tuple[str, ...],
                 loopback_only: bool, recordings_dir: Path, push_live: Push,
                 party_channel: Callable[[str], str], clock: Callable[[], datetime],
                 sink: Callable[[], Any], poke: Callable[[str], Awaitable[Any]],
                 stall_s: float, metrics: Any, gap_s: float | None = None,
                 keep_recording: Callable[[Any, Path], Awaitable[Any]] | None = None,
                 transcode: bool = False) -> None:
        # clock, sink, poke, stall_s, gap_s: the server observes each visit's media itself
        # and records it (visits.observe), then pokes the visit's meter (relayed_visit.py).
        self.store, self.broker, self.node_id, self.lease_s = store, broker, node_id, lease_s
        self.clock, self.sink, self.poke, self.stall_s = clock, sink, poke, stall_s
        self.gap_s = min(gap_s, stall_s) if gap_s is not None else stall_s
        self.turn = (turn_secret, turn_urls, stun_urls)
        self.loopback_only, self.recordings_dir = loopback_only, recordings_dir
        self.push_live, self.party_channel = push_live, party_channel
        self.metrics, self.transcode = metrics, transcode
        # server/recordings.py's keep: a finished file becomes a record in the blob store
        self.keep_recording = keep_recording
        self.running: dict[str, VisitRelay] = {}
        self._claims: dict[str, asyncio.Future[VisitRelay | None]] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}  # signals that came while claiming
        self._stopping = False
        self._subscription: Any = None
        self._listener: asyncio.Task[None] | None = None

    def rtc_configuration(self, expires_at: datetime) -> Any:
        secret, turn_urls, stun_urls = self.turn
        servers = ice_servers(secret=secret, turn_urls=turn_urls, stun_urls=stun_urls,
                              account_id=TURN_ACCOUNT, expires_at=expires_at)
        configuration = rtc_configuration(servers, loopback_only=self.loopback_only)
        # aiortc's default (balanced) bundling leaves the second m-line of a kind on a dropped
        # transport, so a watcher's second audio would never be sent: bundle everything.
        configuration.bundlePolicy = RTCBundlePolicy.MAX_BUNDLE
        return configuration

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="relay-signals")

    async def stop(self) -> None:
        """End every relayed visit here (recordings are finished), then stop listening."""
        self._stopping = True
        for held in list(self.running.values()):
            held.end("server stopping")
        await asyncio.gather(*(h.closed() for h in list(self.running.values())),
                             return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    def media_seen(self, visit_id: str) -> dict[str, dict[str, tuple[int, int, float | None]]]:
        """For presence: what this process's relay of the visit has received from each party
        (`VisitRelay.media_seen`); empty when the visit is not relayed here."""
        held = self.running.get(visit_id)
        return held.media_seen() if held is not None else {}

    async def forward(self, visit_id: str, sender: str, signal: dict[str, Any], *,
                      watch: bool = False) -> bool:
        """Hand a checked signal (`{description}` or `{candidate}`) to the visit's relay, here
        or on its holder. False when it could not be handed on (no broker)."""
        message = {"visit_id": visit_id, "from": sender, "watch": watch, **signal}
        held = await self._holder(visit_id)
        if held is not None:
            held.enqueue(message)
            return True
        try:
            await self.broker.publish(CHANNEL, message)
        except Exception:
            log.warning("visit %s: signal not forwarded (broker unavailable)", visit_id)
            return False
        return True

    async def _holder(self, visit_id: str) -> VisitRelay | None:
        """This process's relay for the visit, taking the lease if it is free; None when
        another process holds it (or the visit is not a relay-mode visit in a call)."""
        held = self.running.get(visit_id)
        if held is not None or self._stopping:
            return None if held is None or held.closing else held
        if visit_id in self._claims:
            return await asyncio.shield(self._claims[visit_id])
        claim: asyncio.Future[VisitRelay | None] = asyncio.get_running_loop().create_future()
        self._claims[visit_id], self._early[visit_id] = claim, []
        held = None
        try:
            held = await self._claim(visit_id)
        finally:
            self._early.pop(visit_id, None)  # for the holder elsewhere, if not taken here
            del self._claims[visit_id]
            claim.set_result(held)
        return held

    async def _claim(self, visit_id: str) -> VisitRelay | None:
        name = f"relay:{visit_id}"
        try:
            if not await self.broker.acquire(name, self.node_id, self.lease_s):
                return None
            async with self.store.read() as conn:
                row = await visits.get(conn, visit_id)
        except Exception:
            log.warning("visit %s: could not take its relay", visit_id, exc_info=True)
            row = None
        if row is None or row.media != "relay" or row.status not in visits.IN_CALL \
                or self._stopping:
            with contextlib.suppress(Exception):
                await self.broker.release(name, self.node_id)
            return None
        held = VisitRelay(self, row)
        self.running[visit_id] = held
        for message in self._early.pop(visit_id, []):  # in the order they came
            held.enqueue(message)
        await held.start()
        return held

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                self._subscription = await self.broker.subscribe(CHANNEL, queue_max=10_000)
            except Exception:
                await asyncio.sleep(1.0)
                continue
            async for item in self._subscription:
                visit_id = item.get("visit_id") if isinstance(item, dict) else None
                if visit_id in self.running:
                    self.running[visit_id].enqueue(item)
                elif visit_id in self._early:
                    self._early[visit_id].append(item)
            return
