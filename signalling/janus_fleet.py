"""The Janus fleet in a running Kinwire (KINWIRE_MEDIA_ENGINE=janus; docs/deploy.md, "Janus
fleet"): each server's liveness lease, placing a relay-mode visit's room, a party's
credentials, and ending the room with the visit.

Liveness: every process checks every server every third of the node lease (the admin API's
get_status with the admin secret, token auth on: JanusEngine.healthy) and, while it answers,
touches the server's node id (janus_presence.node_of its name) in the broker's `nodes` presence
set with the node lease's ttl, as each Kinwire process touches its own. The server's
observations of a visit (signalling/janus_presence.py) name that node on the visit row, so the
meter counts them only while some Kinwire process sees the server healthy, and bills them only
up to the last check that did (signalling/meters.py, "Proof"). A server's name comes from its
GET /janus/info (`server-name`), asked once.

Placement: the first party to join a relay-mode visit places its room on the live server with
the fewest visits in a call (counted on the visits table, so every process counts the same):
creates the room there, then claims it on the row (`media_server`, `media_room`, conditional
on no server being set yet, so two parties joining at once on two processes place it once; the
loser destroys its room if it made it on another server). The other party's join finds it on
the row, and the room already exists. A party joining a visit whose server no process sees
alive (its liveness lease ran out) places it again the same way, on a live server: its parties
rejoin (their media died with the server) and get the new room. Each party then gets its own
credentials (JanusEngine.credentials, expiring at the visit's end).

Ending: every end of a visit is announced by the process that ended it (Meters.announce_end:
the meter's time_up and balance_exhausted, a staff end, a hang-up); that process destroys the
room (`end_visit`), which cuts both parties' media at the server, and deletes the visit's rows
of `janus_handles`; then, for a recorded visit, keeps its recording (server/janus_recordings.py,
wired in server/app.py: this module only destroys the room).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import delete, func, select

from common.broker import Broker
from signalling.janus import JanusEngine, JanusError, JanusUnavailable
from signalling.janus_presence import node_of
from signalling.media_engine import JoinCredentials, Room
from signalling.meters import NODES
from signalling.tables import janus_handles
from signalling.tables import visits as visits_table
from signalling.visits import IN_CALL
from store import Record, Store

log = logging.getLogger("kinwire.janus")


class JanusFleet:
    def __init__(self, engine: JanusEngine, store: Store, broker: Broker, *,
                 node_lease_s: float) -> None:
        self.engine, self.store, self.broker = engine, store, broker
        self.node_lease_s = node_lease_s
        self.names: dict[str, str] = {}  # API URL -> server name (its events' emitter)
        self.live: set[str] = set()  # API URLs that answered this process's last check
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._watch(), name="janus-liveness")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.node_lease_s / 3)
            if not self._stop.is_set():
                await self.check()

    async def check(self) -> None:
        """Check every server at once; touch the liveness lease of each that answers."""
        await asyncio.gather(*(self._check(url) for url in self.engine.servers))

    async def _check(self, url: str) -> None:
        try:
            if url not in self.names:
                name = (await self.engine.servers[url].info()).get("server-name")
                if not isinstance(name, str) or not name:
                    raise JanusUnavailable("no server-name in /info")
                self.names[url] = name
            healthy = await self.engine.healthy(url)
        except (JanusError, JanusUnavailable):
            healthy = False
        if not healthy:
            if url in self.live:
                log.warning("janus %s: health check failed; its visits stop counting", url)
            self.live.discard(url)
            return
        self.live.add(url)
        try:
            await self.broker.touch(NODES, node_of(self.names[url]), self.node_lease_s)
        except Exception as exc:  # the broker away: the lease runs out, as for a process
            log.warning("janus %s: liveness lease not renewed (%s)", url, type(exc).__name__)

    async def _least_loaded(self) -> str:
        if not self.live:
            await self.check()  # the first join may come before the first check
        if not self.live:
            raise JanusUnavailable("no Janus server answers")
        async with self.store.read() as conn:
            counts = dict((await conn.execute(
                select(visits_table.c.media_server, func.count())
                .where(visits_table.c.status.in_(IN_CALL),
                       visits_table.c.media_server.is_not(None))
                .group_by(visits_table.c.media_server))).all())
        order = list(self.engine.servers)
        return min(self.live, key=lambda url: (counts.get(url, 0), order.index(url)))

    async def join(self, row: Record, role: str, account_id: str) -> JoinCredentials:
        """The party's way into the visit's room, placing the room first if nobody has.
        JanusUnavailable when no server answers (the caller undoes the join)."""
        server = row.media_server
        if server is None or await self._dead(server):
            # The room first, then the claim: a server named on the row always has the room,
            # so the other party, joining meanwhile on another process, never gets
            # credentials for a room not made yet. A room on a dead server is placed again
            # the same way (its parties rejoin: their media went with the server).
            mine = await self._least_loaded()
            await self.engine.open(self.engine.room(row.id, mine, record=row.record))
            was = visits_table.c.media_server
            async with self.store.write() as conn:
                await conn.execute(visits_table.update().where(
                    visits_table.c.id == row.id, was.is_(None) if server is None
                    else was == server).values(media_server=mine, media_room=row.id))
                placed = (await conn.execute(select(was).where(
                    visits_table.c.id == row.id))).scalar_one()
            if placed != mine:  # the other party's join placed it elsewhere meanwhile
                await self.engine.end(self.engine.room(row.id, mine, record=row.record))
            elif server is not None:
                log.warning("janus: visit %s placed again, on %s (%s is dead)", row.id, mine,
                            server)
            server = placed
        room = self.engine.room(row.id, server, record=row.record)
        return self.engine.credentials(room, role, account_id, row.end_at)

    async def _dead(self, server: str) -> bool:
        """No process sees the server alive: this one's last check failed and its liveness
        lease ran out (every process's checks renew it). A broker that does not answer proves
        nothing, so nothing is moved then."""
        if server in self.live:
            return False
        name = self.names.get(server)
        if name is None:
            return True  # never reached from here (it died before this process started)
        try:
            return node_of(name) not in await self.broker.present(NODES)
        except Exception:
            return False

    def name_of(self, server: str) -> str | None:
        """A server's name (its events' emitter), from its API URL, once it was reached."""
        return self.names.get(server)

    def room_of(self, row: Record) -> Room | None:
        if row.media_server is None:
            return None
        return self.engine.room(row.id, row.media_server, record=row.record)

    async def end_visit(self, visit_id: str) -> None:
        """Destroy the ended visit's room, if it was placed (cutting its peers' media), and
        forget its handles: Janus's later events about them (hang-ups, detaches) change
        nothing, and a dead server's rows for the visit go too."""
        async with self.store.read() as conn:
            row = (await conn.execute(select(visits_table).where(
                visits_table.c.id == visit_id))).first()
        room = self.room_of(row) if row is not None else None
        if room is None:
            return
        try:
            await self.engine.end(room)
        except (JanusError, JanusUnavailable, KeyError) as exc:
            # A dead server took the room with it; one that stalls keeps it until it dies.
            log.warning("janus: visit %s's room on %s not destroyed (%s)", visit_id,
                        room.server, type(exc).__name__)
        async with self.store.write() as conn:
            await conn.execute(delete(janus_handles).where(janus_handles.c.visit_id == visit_id))
