"""Relay mode: the server terminates both parties' peer connections, forwards their media,
records it (unless the visit's `record` is false), lets staff watch live, and cuts the media
itself when the visit ends. docs/visits.md, "Relay mode", is the description for people.

Which process relays a visit: the one named by the broker lease `relay:<visit_id>` (ttl
`relay_lease_s`, renewed every third of it). A visit is placed when a party joins it, or when
a signal comes for it and no live process relays it (`place`, signalling/placement.py): on the
process with room that carries the fewest sockets, which takes one of its capacity's slots; a
process placing it elsewhere tells that one on the process-wide broker channel "relay"
(`{place, node, holder, slot}`). Every process publishes the signals it receives for a visit
relayed elsewhere on the same channel as `{visit_id, from, watch, description | candidate}`,
and the holder takes the ones for its visits (one that arrives before the placement's message
is kept RECENT_S). Answers go back to the sender's account as live pushes
`visit.signal {visit_id, from: "server", description}`, on whatever process its socket is.
If the holder dies, its peer connections die with it; its load lapses from the broker within
a lease, and the next signal for the visit places it again (the dead holder's lease is
released on its behalf). The processes its signals came through notice first and `move` it:
the parties, and the staff watchers whose watch offers came through them, are told to offer
to the new relay.

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
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.broker import Broker, Subscription
from common.errors import BrokerUnavailable
from common.metrics import Counters
from signalling import placement, visits
from signalling.leases import Lease
from signalling.turn import ice_servers
from store import Record, Store

if TYPE_CHECKING:
    from signalling.relayed_visit import VisitRelay

# The media stack (aiortc, PyAV) is imported when a process first relays a visit, not at
# start: most processes never do (direct mode, Janus, a CLI command), and importing it was
# 0.3 s of CPU at every start of every process.

log = logging.getLogger("kinwire.relay")
CHANNEL = "relay"
TURN_ACCOUNT = "kinwire-relay"
WATCH_S = 0.5  # how often the visits relayed elsewhere are checked for a dead relay
ELSEWHERE_MAX = 10_000  # visits watched; an ended one leaves when its relay dies or by age
# Signals for a visit relayed nowhere here, kept this long for a placement message that may
# come just after them (published by another process at about the same moment). Only that
# race: a signal kept longer would be replayed to a relay that takes the visit over much
# later (an offer its client has long replaced).
RECENT_S, RECENT_PER_VISIT, RECENT_VISITS = 1.0, 32, 256
Push = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


class Relay:
    """This process's relayed visits (the module docstring says who holds which)."""

    def __init__(self, store: Store, broker: Broker, *, node_id: str, lease_s: float,
                 turn_secret: str, turn_urls: tuple[str, ...], stun_urls: tuple[str, ...],
                 loopback_only: bool, recordings_dir: Path, push_live: Push,
                 party_channel: Callable[[str], str], clock: Callable[[], datetime],
                 sink: Callable[[], Any], poke: Callable[[str], Awaitable[Any]],
                 stall_s: float, metrics: Counters, gap_s: float | None = None,
                 keep_recording: Callable[..., Awaitable[Any]] | None = None,
                 transcode: bool = False, capacity: int = 20) -> None:
        # clock, sink, poke, stall_s, gap_s: the server observes each visit's media itself
        # and records it (visits.observe), then pokes the visit's meter (relayed_visit.py).
        self.store, self.broker, self.node_id, self.lease_s = store, broker, node_id, lease_s
        self.clock, self.sink, self.poke, self.stall_s = clock, sink, poke, stall_s
        self.gap_s = min(gap_s, stall_s) if gap_s is not None else stall_s
        self.turn = (turn_secret, turn_urls, stun_urls)
        self.loopback_only, self.recordings_dir = loopback_only, recordings_dir
        self.push_live, self.party_channel = push_live, party_channel
        self.metrics, self.transcode, self.capacity = metrics, transcode, capacity
        # server/recordings.py's keep: a finished file becomes a record in the blob store
        self.keep_recording = keep_recording
        self.sockets: Callable[[], int] = lambda: 0  # this process's sockets (server/app.py)
        self.running: dict[str, VisitRelay] = {}
        self._claims: dict[str, asyncio.Future[VisitRelay | None]] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}  # signals that came while claiming
        # signals for visits relayed nowhere here yet, kept a moment: a placement's message
        # may reach its process after a signal that another process sent on the same channel
        self._recent: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        # visits relayed elsewhere whose signals passed through here: node, and the visit's
        # end (placement.py; watched so that a dead relay's visits are placed again)
        self.elsewhere: dict[str, str] = {}
        # staff accounts whose watch offers for a visit came through here: told when it moves
        self.watchers: dict[str, set[str]] = {}
        self._advertised: placement.Load | None = None
        self._seq = 0
        self._changed = asyncio.Event()
        self._stopping = False
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._claiming: set[asyncio.Task[None]] = set()

    def rtc_configuration(self, expires_at: datetime) -> Any:
        from aiortc import RTCBundlePolicy

        from signalling.media import rtc_configuration

        secret, turn_urls, stun_urls = self.turn
        servers = ice_servers(secret=secret, turn_urls=turn_urls, stun_urls=stun_urls,
                              account_id=TURN_ACCOUNT, expires_at=expires_at)
        configuration = rtc_configuration(servers, loopback_only=self.loopback_only)
        # aiortc's default (balanced) bundling leaves the second m-line of a kind on a dropped
        # transport, so a watcher's second audio would never be sent: bundle everything.
        configuration.bundlePolicy = RTCBundlePolicy.MAX_BUNDLE
        return configuration

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="relay-signals"),
                       asyncio.create_task(self._advertise(), name="relay-load"),
                       asyncio.create_task(self._watch(), name="relay-watch")]

    async def stop(self) -> None:
        """End every relayed visit here (recordings are finished), then stop listening."""
        self._stopping = True
        await asyncio.gather(*self._claiming, return_exceptions=True)  # refused, or running
        for held in list(self.running.values()):
            held.end("server stopping")
        await asyncio.gather(*(h.closed() for h in list(self.running.values())),
                             return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._advertised is not None:  # no room here any more, at once
            with contextlib.suppress(Exception):
                await self.broker.leave(placement.LOADS, self._advertised.member())

    def writing(self, path: Path) -> bool:
        """Whether a file under the recordings' .partial/ folder may be one of this process's
        recordings in progress (`<visit_id>[-n].webm[.part]`, recording.reserve): not stale,
        however long since it changed (housekeeping's orphan sweep asks)."""
        return path.name.split(".", 1)[0].split("-", 1)[0] in self.running

    async def hand_over(self) -> None:
        """A drain (server/http/drain.py): no more visits are placed here, every visit relayed here
        is placed on another process and its parties told to offer there (`move`), then the
        relays here end, keeping what they recorded as a segment of each recording."""
        self._stopping = True
        if self._advertised is not None:
            with contextlib.suppress(Exception):
                await self.broker.leave(placement.LOADS, self._advertised.member())
        await asyncio.gather(*self._claiming, return_exceptions=True)
        for visit_id, held in list(self.running.items()):
            await self.move(visit_id, "draining", avoid=self.node_id)
            held.end("moved: this process is draining")
        await asyncio.gather(*(h.closed() for h in list(self.running.values())),
                             return_exceptions=True)

    def media_seen(self, visit_id: str) -> dict[str, dict[str, tuple[int, int, float | None]]]:
        """For presence: what this process's relay of the visit has received from each party
        (`VisitRelay.media_seen`); empty when the visit is not relayed here."""
        held = self.running.get(visit_id)
        return held.media_seen() if held is not None else {}

    # -- placement (signalling/placement.py)

    def relayed(self) -> int:
        """Visits relayed here, or being taken on: what counts against the capacity."""
        return len({*self.running, *self._claims})

    def load(self) -> placement.Load:
        self._seq += 1
        return placement.Load(self.node_id, self._seq, self.relayed(), self.capacity,
                              self.sockets())

    async def loads(self) -> dict[str, placement.Load]:
        """Every live process's latest load; this process's own as it is now."""
        found = placement.latest(await self.broker.present(placement.LOADS))
        if not self._stopping:
            found[self.node_id] = placement.Load(self.node_id, self._seq, self.relayed(),
                                                 self.capacity, self.sockets())
        else:
            found.pop(self.node_id, None)
        return found

    async def place(self, visit_id: str, *, avoid: str | None = None) -> str:
        holder = await self._place(visit_id, avoid)
        node = placement.node_of(holder)
        if node != self.node_id:  # watched from here: a party's signals come through here
            self.elsewhere[visit_id] = node
        return holder

    async def _place(self, visit_id: str, avoid: str | None) -> str:
        """Who relays the visit (its lease's holder, `<node>/<token>`: placement.node_of
        reads the node), placing it first if nobody (alive) does: on the
        process with room that carries the fewest sockets. RelayFull when none has room;
        BrokerUnavailable as the broker raises it. `avoid`: a process that must not keep or
        take it (a draining one)."""
        name = placement.lease_name(visit_id)
        loads = await self.loads()
        holder = await self.broker.holder(name)
        if holder is not None:
            node = placement.node_of(holder)
            winding_down = visit_id in self.running and self.running[visit_id].closing \
                and self.running[visit_id].holder == holder
            if node == self.node_id and node != avoid and self._local(visit_id) is None \
                    and not winding_down:
                # placed here by another process, its message still on the way: begin now
                # (the message is then ignored); a signal must not wait for it, nor lose it
                self._begin(visit_id, holder, placement.slot_of(holder))
                return holder
            if node != avoid and node in loads and not winding_down:
                return holder
            # dead, draining, or a run here that is winding down: free it (only if it still
            # holds it), its slot lapses or is released with it
            await self.broker.release(name, holder)
        for load in placement.candidates(loads, avoid):
            slot = await self._take_slot(load, visit_id)
            if slot is None:
                continue
            holder = f"{load.node}/{secrets.token_hex(4)}/{slot}"
            lease, slot_lease = placement.leases(self.broker, load.node, visit_id, holder, slot,
                                                 self.lease_s)
            if await lease.acquire():
                await self._hand(visit_id, load.node, holder, slot)
                return holder
            # placed meanwhile by another process: give the slot back, go where it went
            await slot_lease.release()
            other = await self.broker.holder(name)
            if other is not None:
                return other
        self.metrics.inc("kinwire_relay_refused_total")
        log.warning("visit %s: no process has room to relay it (%d known)", visit_id,
                    len(loads))
        raise placement.RelayFull(visit_id)

    async def _take_slot(self, load: placement.Load, visit_id: str) -> int | None:
        for i in range(load.capacity):
            slot = (load.relayed + i) % load.capacity  # the likely free ones first
            if await Lease(self.broker, placement.slot_name(load.node, slot), visit_id,
                           self.lease_s).acquire():
                return slot
        return None

    async def _hand(self, visit_id: str, node: str, holder: str, slot: int) -> None:
        """Start the placed relay: here at once, or elsewhere by a message on the channel."""
        if node == self.node_id:
            self._begin(visit_id, holder, slot)
            return
        await self.broker.publish(CHANNEL, {"place": visit_id, "node": node,
                                            "holder": holder, "slot": slot})

    def _begin(self, visit_id: str, holder: str, slot: int) -> None:
        """Take on a visit placed here (its lease and slot are held for this process)."""
        if self._local(visit_id) is not None:
            return
        claim: asyncio.Future[VisitRelay | None] = asyncio.get_running_loop().create_future()
        self._claims[visit_id] = claim
        now = time.monotonic()
        self._early[visit_id] = [m for t, m in self._recent.pop(visit_id, [])
                                 if now - t <= RECENT_S]
        self.elsewhere.pop(visit_id, None)
        self._changed.set()

        async def claiming() -> None:
            held = None
            try:
                held = await self._claim(visit_id, holder, slot)
            except Exception:
                log.warning("visit %s: could not take its relay", visit_id, exc_info=True)
            finally:
                self._early.pop(visit_id, None)
                del self._claims[visit_id]
                claim.set_result(held)
                self._changed.set()

        task = asyncio.create_task(claiming(), name=f"relay-claim-{visit_id}")
        self._claiming.add(task)
        task.add_done_callback(self._claiming.discard)

    def _local(self, visit_id: str) -> VisitRelay | asyncio.Future[VisitRelay | None] | None:
        held = self.running.get(visit_id)
        if held is not None and not held.closing:
            return held
        return self._claims.get(visit_id)

    async def forward(self, visit_id: str, sender: str, signal: dict[str, Any], *,
                      watch: bool = False) -> bool:
        """Hand a checked signal (`{description}` or `{candidate}`) to the visit's relay, here
        or on its holder, placing the visit first if nobody relays it. False when it could not
        be handed on (no broker); RelayFull when it cannot be placed."""
        message = {"visit_id": visit_id, "from": sender, "watch": watch, **signal}
        if watch:
            self.watchers.setdefault(visit_id, set()).add(sender)
        if not self._stopping and self._local(visit_id) is None:
            try:
                await self.place(visit_id)
            except BrokerUnavailable:
                log.warning("visit %s: signal not forwarded (broker unavailable)", visit_id)
                return False
        local = self._local(visit_id)
        if isinstance(local, asyncio.Future):
            local = await asyncio.shield(local)
        if local is not None:
            local.enqueue(message)
            return True
        try:
            await self.broker.publish(CHANNEL, {**message, "via": self.node_id})
        except Exception:
            log.warning("visit %s: signal not forwarded (broker unavailable)", visit_id)
            return False
        return True

    async def _claim(self, visit_id: str, holder: str, slot: int) -> VisitRelay | None:
        lease, slot_lease = placement.leases(self.broker, self.node_id, visit_id, holder, slot,
                                             self.lease_s)
        async with self.store.read() as conn:
            row = await visits.get(conn, visit_id)
        if row.media != "relay" or row.status not in visits.IN_CALL or self._stopping \
                or not await lease.renew():
            await lease.release()
            await slot_lease.release()
            return None
        from signalling.relayed_visit import VisitRelay

        held = VisitRelay(self, row, holder=holder, slot=slot)
        self.running[visit_id] = held
        for message in self._early.pop(visit_id, []):  # in the order they came
            held.enqueue(message)
        await held.start()
        if row.record and self.keep_recording is not None:
            task = asyncio.create_task(self._salvage(row), name=f"relay-salvage-{visit_id}")
            self._claiming.add(task)
            task.add_done_callback(self._claiming.discard)
        return held

    async def _salvage(self, row: Record) -> None:
        """A relay taking a visit over (its last relay died) keeps what that one recorded,
        when its `.part` file is in reach (a shared folder, or this process's own from before
        a restart): copied into a complete file (remux.salvage) and kept as the next segment
        of the visit's recording. A file that changed within half a lease may still be
        written by a relay that is not dead after all: left alone (housekeeping's orphan sweep
        deletes what is never salvaged)."""
        from signalling import remux

        cutoff = time.time() - self.lease_s / 2
        for part in await asyncio.to_thread(_stale_parts, self.recordings_dir, row.id, cutoff):
            try:
                ended_at = datetime.fromtimestamp(part.stat().st_mtime, UTC)
                done = await asyncio.to_thread(remux.salvage, part)
                if done is not None:
                    await self.keep_recording(row, done, ended_at)
                    log.warning("visit %s: kept the recording a dead relay left (%s)", row.id,
                                part.name)
            except Exception:
                log.exception("visit %s: could not salvage %s", row.id, part.name)

    def ended(self, held: VisitRelay) -> None:
        """A relay here has wound down (relayed_visit.py): room again."""
        if self.running.get(held.visit_id) is held:
            del self.running[held.visit_id]
            if held.visit_id not in self.elsewhere:  # not moved on: nobody to tell any more
                self.watchers.pop(held.visit_id, None)
        self._changed.set()

    async def _advertise(self) -> None:
        """Touch this process's load every third of the lease, and whenever it changed."""
        while not self._stopping:
            self._changed.clear()
            load = self.load()
            try:
                await self.broker.touch(placement.LOADS, load.member(), self.lease_s)
                previous, self._advertised = self._advertised, load
                if previous is not None:
                    await self.broker.leave(placement.LOADS, previous.member())
            except Exception:
                log.warning("relay: could not advertise this process's load")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.lease_s / 3)

    # -- failover

    async def _watch(self) -> None:
        """Every WATCH_S, the visits relayed elsewhere whose signals passed through here: one
        whose process's load has lapsed (dead, or drained) is placed again and both parties
        are told to offer anew (`move`)."""
        while True:
            await asyncio.sleep(WATCH_S)
            if not self.elsewhere or self._stopping:
                continue
            try:
                alive = await self.loads()
            except BrokerUnavailable:
                continue  # nobody can be placed anyway
            while len(self.elsewhere) > ELSEWHERE_MAX:  # ended long ago: the oldest first
                oldest = next(iter(self.elsewhere))
                del self.elsewhere[oldest]
                self.watchers.pop(oldest, None)
            while len(self.watchers) > ELSEWHERE_MAX:
                del self.watchers[next(iter(self.watchers))]
            for visit_id, node in list(self.elsewhere.items()):
                if node not in alive:
                    await self.move(visit_id, f"{node} gone")

    async def move(self, visit_id: str, why: str, *, avoid: str | None = None) -> None:
        """Place a visit whose relay died or is draining again, and push
        `visit.relay_moved {visit_id, relay}` (the new relay's lease holder) to both parties
        and to the staff watching it that this process knows of (their watch offers came
        through here, or they watch it here): the clients offer to it. Every process that
        notices does this; the placement is made once (the lease), and a client offers once
        per new relay (it compares `relay` with its own)."""
        try:
            async with self.store.read() as conn:
                row = await visits.get(conn, visit_id)
        except Exception:
            log.warning("visit %s: could not read it to move its relay", visit_id)
            return
        if row.media != "relay" or row.status not in visits.IN_CALL:
            self.elsewhere.pop(visit_id, None)
            self.watchers.pop(visit_id, None)
            return
        try:
            holder = await self.place(visit_id, avoid=avoid)
        except Exception:
            log.warning("visit %s: its relay could not be moved (%s); trying again", visit_id,
                        why, exc_info=True)
            return
        node = placement.node_of(holder)
        log.warning("visit %s: relay moved to %s (%s)", visit_id, node, why)
        held = self.running.get(visit_id)
        watching = {*self.watchers.get(visit_id, ()), *(held.watching() if held else ())}
        for account in (row.family_id, row.person_id, *sorted(watching)):
            with contextlib.suppress(Exception):
                await self.push_live(account, "visit.relay_moved",
                                     {"visit_id": visit_id, "relay": holder})

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                self._subscription = await self.broker.subscribe(CHANNEL, queue_max=10_000)
            except Exception:
                await asyncio.sleep(1.0)
                continue
            async for item in self._subscription:
                if not isinstance(item, dict):
                    continue
                if "place" in item:
                    if item.get("node") == self.node_id and not self._stopping:
                        self._begin(str(item["place"]), str(item["holder"]), int(item["slot"]))
                    continue
                visit_id = item.get("visit_id")
                if item.get("via") == self.node_id and visit_id not in self.running:
                    continue  # its own, sent on because the visit was relayed elsewhere
                if visit_id in self.running:
                    self.running[visit_id].enqueue(item)
                elif visit_id in self._early:
                    self._early[visit_id].append(item)
                else:
                    self._keep_recent(str(visit_id), item)
            return

    def _keep_recent(self, visit_id: str, item: dict[str, Any]) -> None:
        now = time.monotonic()
        kept = self._recent.setdefault(visit_id, [])
        kept.append((now, item))
        del kept[:-RECENT_PER_VISIT]
        if len(self._recent) > RECENT_VISITS or now - kept[0][0] > RECENT_S:
            for visit, items in list(self._recent.items()):
                items[:] = [(t, m) for t, m in items if now - t <= RECENT_S]
                if not items:
                    del self._recent[visit]
            while len(self._recent) > RECENT_VISITS:
                del self._recent[next(iter(self._recent))]


def _stale_parts(folder: Path, visit_id: str, cutoff: float) -> list[Path]:
    """The visit's `.part` recordings in the folder (`<visit>.webm.part`, `<visit>-n.webm.part`)
    last modified before `cutoff` (time.time())."""
    found = []
    for path in sorted(folder.glob(f"{visit_id}*.webm.part")):
        stem = path.name.removesuffix(".webm.part")
        if stem != visit_id and not (stem.startswith(f"{visit_id}-")
                                     and stem[len(visit_id) + 1:].isdigit()):
            continue
        try:
            if path.stat().st_mtime <= cutoff:
                found.append(path)
        except FileNotFoundError:
            continue
    return found
