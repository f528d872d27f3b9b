"""Janus's view of a visit's media, shared by every Kinwire process and fed to the meter
(issue 16; docs/visits.md, "Trust", and docs/deploy.md, "Janus fleet").

A Janus server posts its events to whichever Kinwire process its load balancer picks, so a
handle's `attached` and its later `webrtcup` may reach different processes. The handles
therefore live in the `janus_handles` table: a post restores the handles its events name
(signalling/janus_events.py, `Presence.restore`), applies its events, and stores what changed,
in one transaction. A server posts one batch at a time and waits for the answer (Janus's sample
event handler), so its posts are applied in order wherever they land.

Then, in the same transaction, the server's view of each visit whose handles changed goes to
`visits.observe`, with the Janus server as the observer: its node id (`node_of`, in the
`nodes` presence set) is touched by every Kinwire process's health check of that server
(signalling/janus_fleet.py), exactly as a Kinwire process touches its own. So the meter counts
the server's observation only while that server answers its health checks, and bills it only
up to the last check that proved it alive: a Janus server killed -9 stops counting within a
node lease, and the time since its last good check is never billed. A client's own reports
change nothing in relay mode (visits.set_media is not read).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from signalling import visits
from signalling.janus_events import CORE, SESSION, Event, Observation, Presence
from signalling.tables import janus_handles

# Janus says "not receiving" after its no_media_timer (1 s, deploy/janus/janus.jcfg.in) without
# packets: the media stopped that long before the post, which the meter takes back.
NO_MEDIA_S = 1.0
HANDLE_STALE_S = 86_400.0  # a handle untouched this long belongs to a server gone for good
NODE_PREFIX = "janus-"


def node_of(server_name: str) -> str:
    """A Janus server's node id in the `nodes` presence set, from its name (the events'
    `emitter`, Janus's `server_name`): short enough for the visit row's node columns."""
    return NODE_PREFIX + hashlib.sha256(server_name.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Change:
    """A visit whose server view was recorded by a post: the row before and after."""
    visit_id: str
    before: Any
    after: Any


async def record(conn: AsyncConnection, sink: visits.EventSink, presence: Presence,
                 events: list[Event], now: datetime,
                 name_of: Callable[[str], str | None] = lambda server: None,
                 ) -> tuple[list[Observation], list[Change]]:
    """Apply a post's events to the shared handles and record each touched visit's view.
    The work is done on a Presence restored from the table for this post alone: the handles
    the post's events name (all of the server's on a core event; a session's on a session
    event), then the other handles of each visit they touched. `presence` (the app's) gives the
    token secret; it holds no handles (the caller keeps the returned observations in its
    `recent` once committed: a look for tests and debugging, never read for billing).
    `name_of`: a server's name from its API URL (JanusFleet.name_of), so that only the server
    the visit is placed on is heard about it (not one it was moved away from)."""
    observations: list[Observation] = []
    changes: list[Change] = []
    for emitter in dict.fromkeys(e.emitter for e in events):
        mine = [e for e in events if e.emitter == emitter]
        before = await _load(conn, emitter, mine)
        work = Presence(presence.secret)
        work.restore(emitter, before)
        seen = work.apply(mine)
        observations += seen
        after = work.states(emitter)
        touched = {state["party"][0] for hid, state in before.items()
                   if after.get(hid) != state}
        touched |= {state["party"][0] for hid, state in after.items()
                    if before.get(hid) != state}
        gone = [hid for hid in before if hid not in after]
        if gone:
            await conn.execute(delete(janus_handles).where(
                janus_handles.c.server == emitter, janus_handles.c.handle_id.in_(gone)))
        for hid, state in after.items():
            if before.get(hid) == state:
                continue
            values = {"visit_id": state["party"][0], "session_id": state.get("session_id"),
                      "state": state, "updated_at": now}
            if hid in before:
                await conn.execute(janus_handles.update().where(
                    janus_handles.c.server == emitter, janus_handles.c.handle_id == hid)
                    .values(**values))
            else:
                await conn.execute(janus_handles.insert().values(
                    server=emitter, handle_id=hid, **values))
        if touched:  # each touched visit's whole view: its other handles on this server too
            rows = (await conn.execute(select(janus_handles.c.handle_id, janus_handles.c.state)
                                       .where(janus_handles.c.server == emitter,
                                              janus_handles.c.visit_id.in_(sorted(touched)))
                                       )).all()
            work.restore(emitter, {row.handle_id: row.state for row in rows})
        for visit_id in sorted(touched):
            stalled = any(o.kind == "not_receiving" and o.party.visit_id == visit_id
                          for o in seen)
            change = await _observe(conn, sink, work, emitter, visit_id, now, stalled,
                                    name_of)
            if change is not None:
                changes.append(change)
    return observations, changes


async def view(conn: AsyncConnection, secret: str, visit_id: str) -> Presence:
    """The visit's handles as stored, on every server: `connected` and `publishers` as the
    meter's view was last recorded (tests, debugging)."""
    rows = (await conn.execute(select(janus_handles.c.server, janus_handles.c.handle_id,
                                      janus_handles.c.state)
                               .where(janus_handles.c.visit_id == visit_id))).all()
    found = Presence(secret)
    for server in {row.server for row in rows}:
        found.restore(server, {row.handle_id: row.state for row in rows
                               if row.server == server})
    return found


async def _load(conn: AsyncConnection, emitter: str, events: list[Event]) -> dict[int, Any]:
    """The stored handles a server's events may change: all of them after a core event (a
    restart or shutdown forgets them all), else those the events name by handle or, for a
    session's end, by session."""
    where = [janus_handles.c.server == emitter]
    if not any(e.type == CORE for e in events):
        handles = sorted({e.handle_id for e in events if e.handle_id is not None})
        sessions = sorted({e.session_id for e in events
                           if e.type == SESSION and e.session_id is not None})
        if not handles and not sessions:
            return {}
        where.append(or_(janus_handles.c.handle_id.in_(handles),
                         janus_handles.c.session_id.in_(sessions)))
    rows = (await conn.execute(select(janus_handles.c.handle_id, janus_handles.c.state)
                               .where(*where))).all()
    return {row.handle_id: row.state for row in rows}


async def _observe(conn: AsyncConnection, sink: visits.EventSink, presence: Presence,
                   emitter: str, visit_id: str, now: datetime, stalled: bool,
                   name_of: Callable[[str], str | None]) -> Change | None:
    try:
        row = await visits.get(conn, visit_id)
    except visits.VisitError:
        return None  # a room Kinwire made for no visit (the engine's own tests)
    if row.media != "relay" or row.media_server is None:
        return None  # only a relay-mode visit placed on the fleet is observed by Janus
    if name_of(row.media_server) not in (None, emitter):
        return None  # the server the visit was placed on before (it was declared dead)
    connected = presence.connected(visit_id)
    # A stall is reported after NO_MEDIA_S without packets: the media stopped then. A hang-up
    # or a publisher leaving is reported as it happens.
    stopped_at = now - timedelta(seconds=NO_MEDIA_S) if stalled and not connected else None
    after = await visits.observe(conn, sink, visit_id, connected, now, node_of(emitter),
                                 stopped_at=stopped_at)
    return Change(visit_id, row, after)


async def prune_stale(conn: AsyncConnection, now: datetime, batch_rows: int) -> int:
    """Delete up to `batch_rows` handles no post has touched for HANDLE_STALE_S: those a Janus
    server held when it died for good (a restart's `startup` event drops its own, and a visit's
    end its visit's), such as a handle attached for no visit. No visit lasts that long; a
    handle of a live visit is touched by each of its events. How many were deleted."""
    stale = (await conn.execute(
        select(janus_handles.c.server, janus_handles.c.handle_id)
        .where(janus_handles.c.updated_at < now - timedelta(seconds=HANDLE_STALE_S))
        .limit(batch_rows))).all()
    for server in {row.server for row in stale}:
        await conn.execute(delete(janus_handles).where(
            janus_handles.c.server == server,
            janus_handles.c.handle_id.in_([r.handle_id for r in stale if r.server == server])))
    return len(stale)
